"""Shared machinery of the emulator: errors, routing, storage, operations, IAM and the control plane."""
