"""Offline guardrails: PII and secret detectors, masking, and an incremental stream scanner (issue 15).

Sans-IO: plain functions over `str`; the gateway wires them into requests and streams.
"""
