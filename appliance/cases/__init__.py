"""Annotations -> training cases (appliance/cases).

``from_seg`` (a received or imported SEG -> case), ``from_nifti`` (a NIfTI label file on a
stored series -> case), ``concepts`` (coded-concept matching of segments to task labels),
``split`` (the held-out split), ``recording`` (a case's label file and row, or a
refusal) and ``loading`` (recorded cases for trainers and the validation gate). DICOM
files given on the command line enter the store through ``appliance.flow.ingest``.
"""
