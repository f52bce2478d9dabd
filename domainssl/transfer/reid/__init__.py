"""RGB-infrared re-identification transfer: cross-modality retrieval protocols."""
