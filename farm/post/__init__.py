"""The CPU stage: what is made from committed renders, off the GPUs."""
