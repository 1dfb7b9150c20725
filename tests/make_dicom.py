"""DICOM files the tests make with pydicom: CT slices from Hounsfield values, with or
without a window in the header, uncompressed or compressed, and broken ones.

The patient fields hold SECRET markers, so a test can check that none of them reaches a
log, a message or an answer."""

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SECRET = "SECRETPATIENT"


def ct_slice(path, hu, intercept=-1024.0, slope=1.0, window=None, explanation=None,
             position=None, compress=None, photometric="MONOCHROME2", rows=None, cols=None):
    """Write a CT slice whose stored values map back to `hu` (a 2-D array of HU) through
    slope and intercept. window: (center, width) or lists of them for the header."""
    hu = np.asarray(hu, np.float64)
    stored = np.rint((hu - intercept) / slope).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"{SECRET}^NAME"
    ds.PatientID = f"{SECRET}-ID"
    ds.PatientBirthDate = "19450101"
    ds.InstitutionName = f"{SECRET} HOSPITAL"
    ds.StudyDescription = f"{SECRET} STUDY"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows or stored.shape[0], cols or stored.shape[1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
    if window is not None:
        centers, widths = window
        ds.WindowCenter, ds.WindowWidth = centers, widths
        if explanation is not None:
            ds.WindowCenterWidthExplanation = explanation
    if position is not None:
        ds.ImagePositionPatient = [0.0, 0.0, float(position)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelData = stored.tobytes()
    if compress is not None:
        ds.compress(compress)
    ds.save_as(path, enforce_file_format=True)
    return path


def bands(values, size=48):
    """A size x size HU image in vertical bands, one per value."""
    a = np.zeros((size, size))
    for i, v in enumerate(values):
        a[:, i * size // len(values):(i + 1) * size // len(values)] = v
    return a


def read_back(path):
    return pydicom.dcmread(path)
