"""Local stand-in for RainMaker's cloud: REST API for clients, MQTT ingestion from nodes, user-node mapping."""

from rmkit.cloud.mqtt import MqttSettings
from rmkit.cloud.service import CloudService

__all__ = ["CloudService", "MqttSettings"]
