"""DICOM in and out: listener, sender, spool, series -> volume, SEG/SR writers.

Imports pydicom, pynetdicom, highdicom and numpy only. Never torch, never ``appliance``.
Lower layers report upward through callbacks passed in from above.
"""
