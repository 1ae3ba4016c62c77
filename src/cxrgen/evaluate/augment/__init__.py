"""The augmentation study (RoentGen; RoentGen-v2): does synthetic data help a real classifier?

The same classifier is trained on real only, synthetic only, real + synthetic, and synthetic then
real images at matched sizes and several seeds, and scored by AUROC on a held-out real test split.
"""
