"""Pure builders: policy and settings in, configuration text or specs out. No I/O."""
