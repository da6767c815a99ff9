#!/bin/sh
# docker-compose's one-shot `credentials` service: writes the broker's password file (hashed by
# mosquitto_passwd) and the simulator's sensor logins into the `credentials` volume, from the
# passwords in .env. Every sensor of the registry logs in with its id; in this demo set-up all
# simulated sensors share MQTT_SENSOR_PASSWORD (real sensors each get their own).
set -eu
out=/credentials
umask 077
ids=$(sed -n 's/.*"id": *"\([a-z0-9][a-z0-9_-]*\)".*/\1/p' /floodwatch/sensors.geojson)
{
  echo "admin:${MQTT_ADMIN_PASSWORD}"
  echo "ingest:${MQTT_INGEST_PASSWORD}"
  echo "api:${MQTT_API_PASSWORD}"
  for id in $ids; do echo "${id}:${MQTT_SENSOR_PASSWORD}"; done
} > "$out/mosquitto.passwd"
mosquitto_passwd -U "$out/mosquitto.passwd"
# The broker runs as the image's `mosquitto` user (uid 1883).
chown 1883:1883 "$out/mosquitto.passwd"
{
  printf '{'
  sep=''
  for id in $ids; do printf '%s"%s": "%s"' "$sep" "$id" "$MQTT_SENSOR_PASSWORD"; sep=', '; done
  printf '}\n'
} > "$out/sensors.json"
# The simulator runs as uid 10001 (see the Dockerfile).
chown 10001 "$out/sensors.json"
