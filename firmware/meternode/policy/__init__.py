# Policies and safe updates: the tariff/limit/demand-response language and its engine,
# signed bundle verification (pure SHA-512 + Ed25519), atomic apply, firmware OTA slots.
