"""Where a reading enters: MQTT in, judged, stored in InfluxDB, dead-lettered if bad."""
