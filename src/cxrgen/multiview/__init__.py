"""CoDi XR building blocks shared by its arms: the aligned encoders and their contrastive maths."""
