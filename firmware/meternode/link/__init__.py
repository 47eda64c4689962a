# Uplinks: MQTT (mqtt.py client, packets and reconnect backoff, tls.py), the outbox that drains
# the record log (outbox.py), the link supervisor (uplink.py), Home Assistant discovery, signed
# commands (commands.py, actions.py), LoRaWAN (loracodec.py, airtime.py, lorawan.py,
# loralink.py, loraservice.py), Wi-Fi supervision (wifi.py), and service.py wiring it for node.py.
