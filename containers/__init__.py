"""Build contexts of the sandbox images (one folder per image); see awf_kernel.images."""
