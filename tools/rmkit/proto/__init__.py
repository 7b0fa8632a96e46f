"""Protobuf messages of RainMaker provisioning, generated from the .proto files beside this module.

The .proto files are ours, written from the field numbers of ESP-IDF's and RainMaker's own .proto files (docs/protocol.md). `rmkit.proto.pb`
exposes every message class and enum (generated on first use into `_gen/`, see `rmkit.proto.gen`).
"""
