"""The distillation methods: encodings, the synthetic set, augmentation, matching, the loop, trajectory matching."""
