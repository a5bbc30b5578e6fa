"""Tools beside the clinical path, never imported by it: ``demo`` + ``demo_pacs``
(``make demo``), ``preview`` (PNG previews of results), ``phantom_studies`` (phantom DICOM
studies with known truth) and ``real_cases`` + ``real_readers`` + ``real_evaluation`` (the
evaluation on real, labelled scans)."""
