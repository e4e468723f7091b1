"""Expert offloading: memory tiers to caches, copy engines, prefetching and host-CPU experts."""
