"""Skip-aware fine-tuning and E2E evaluation (the paper's method); not used by serving."""
