# Runs first at power-on and after every reset (ESP32 and virtual board alike).
# Kept empty on purpose: main.py builds and runs the node.
