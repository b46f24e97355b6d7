"""Skip-aware paged KV cache bookkeeping (pure Python)."""

from skipdecode.kv_cache.block_manager import KVCacheManager, num_blocks_for_budget

__all__ = ["KVCacheManager", "num_blocks_for_budget"]
