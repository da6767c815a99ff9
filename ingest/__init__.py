"""Where a reading enters: MQTT in, decoded and validated, stored in InfluxDB, dead-lettered if bad."""
