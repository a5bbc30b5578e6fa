"""The clinical path, in the order data moves along it.

``ingest`` (listener callbacks into the spool and store; files given on the command
line), ``scheduler`` (quiet series become complete), ``worker`` (claims complete series),
``pipeline`` (:func:`~appliance.flow.pipeline.run_claim`: route, volume, model, SEG + SR,
outputs queued; owns each job from start to finish) and ``outbox`` (sends the results,
with retries and a dead letter). ``segmenting`` holds the model stages a job runs, shared
with ``offline`` (``appliance segment``: a DICOM folder or NIfTI file through the same
preparation and stages; NIfTI in and out by ``nifti_io``). Never imports ``tools``,
``cli`` or ``federation``.
"""
