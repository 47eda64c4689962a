# Uplinks: MQTT over TCP/TLS (mqtt.py), telemetry payloads (telemetry.py).
