// A CPU allocator that keeps large blocks mapped for reuse: torch.ops.pagebatch_cpu.install_block_cache.
//
// A model step allocates and frees the same few activation sizes layer after layer. glibc either serves them
// from its heap (where they fragment it between small long-lived objects: the engine core's memory grows with
// the length of the file) or, above a fixed mmap threshold, maps and unmaps each one (every step faults its
// activations in again, page by page: a third slower on a real model's prefill). This allocator takes blocks
// of at least `min_bytes` from mmap in whole 2 MiB pages (transparent huge pages where the kernel has them),
// and keeps the freed ones, up to `max_cached` bytes, for the next request of about their size; smaller
// allocations go to malloc as before. `empty_block_cache` unmaps the kept blocks (the engine core calls it
// with malloc_trim), so an idle process holds none.
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <sys/mman.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include <torch/library.h>  // not torch/extension.h: the JIT build skips pybind11 (seconds, not ~35 s)

namespace {

constexpr size_t kPage = size_t(2) << 20;  // a huge page: blocks are whole, aligned ones

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < min_bytes_) {
      void* p = c10::alloc_cpu(n);
      return {p, p, &c10::free_cpu, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t size = (n + kPage - 1) / kPage * kPage;
    void* p = reuse(size);
    if (p == nullptr) p = map(size);
    return {p, p, &BlockCache::release_block, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &BlockCache::release_any; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void configure(size_t min_bytes, size_t max_cached) {
    std::lock_guard<std::mutex> guard(mutex_);
    min_bytes_ = min_bytes;
    max_cached_ = max_cached;
  }

  void give_back(void* p) {
    std::lock_guard<std::mutex> guard(mutex_);
    auto it = live_.find(p);
    const size_t size = it->second;
    live_.erase(it);
    if (cached_ + size <= max_cached_) {
      free_.emplace(size, p);
      cached_ += size;
    } else {
      munmap(p, size);
    }
  }

  bool owns(void* p) {
    std::lock_guard<std::mutex> guard(mutex_);
    return live_.count(p) > 0;
  }

  int64_t empty() {
    std::lock_guard<std::mutex> guard(mutex_);
    const size_t released = cached_;
    for (auto& [size, p] : free_) munmap(p, size);
    free_.clear();
    cached_ = 0;
    return static_cast<int64_t>(released);
  }

  std::vector<int64_t> bytes() {
    std::lock_guard<std::mutex> guard(mutex_);
    size_t live = 0;
    for (auto& [p, size] : live_) live += size;
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(live)};
  }

  static void release_block(void* p);
  static void release_any(void* p);

 private:
  // The smallest kept block that fits, unless it is over a quarter larger than asked (then map a new one).
  void* reuse(size_t size) {
    std::lock_guard<std::mutex> guard(mutex_);
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 4) return nullptr;
    void* p = it->second;
    live_.emplace(p, it->first);
    cached_ -= it->first;
    free_.erase(it);
    return p;
  }

  void* map(size_t size) {
    // Over-map by a page and trim both ends, so the block starts on a huge-page boundary.
    void* raw = mmap(nullptr, size + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kPage - 1) / kPage * kPage;
    if (aligned > start) munmap(raw, aligned - start);
    const uintptr_t end = aligned + size, mapped_end = start + size + kPage;
    if (mapped_end > end) munmap(reinterpret_cast<void*>(end), mapped_end - end);
    void* p = reinterpret_cast<void*>(aligned);
    madvise(p, size, MADV_HUGEPAGE);  // advice only: without transparent huge pages it changes nothing
    std::lock_guard<std::mutex> guard(mutex_);
    live_.emplace(p, size);
    return p;
  }

  std::mutex mutex_;
  size_t min_bytes_ = size_t(1) << 20;
  size_t max_cached_ = 0;
  size_t cached_ = 0;
  std::multimap<size_t, void*> free_;       // kept blocks by size
  std::unordered_map<void*, size_t> live_;  // blocks in use, and their sizes
};

// Never destroyed: tensors freed during interpreter shutdown still find it.
BlockCache& cache() {
  static BlockCache* instance = new BlockCache();
  return *instance;
}

void BlockCache::release_block(void* p) { cache().give_back(p); }

void BlockCache::release_any(void* p) {
  if (cache().owns(p)) {
    cache().give_back(p);
  } else {
    c10::free_cpu(p);
  }
}

void install_block_cache(int64_t min_bytes, int64_t max_cached) {
  TORCH_CHECK(min_bytes > 0 && max_cached >= 0, "install_block_cache: min_bytes > 0 and max_cached >= 0");
  cache().configure(static_cast<size_t>(min_bytes), static_cast<size_t>(max_cached));
  c10::SetCPUAllocator(&cache(), /*priority=*/1);  // above the default allocator's 0
}

int64_t empty_block_cache() { return cache().empty(); }

std::vector<int64_t> block_cache_bytes() { return cache().bytes(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(pagebatch_cpu, m) {
  m.def("install_block_cache(int min_bytes, int max_cached) -> ()", &install_block_cache);
  m.def("empty_block_cache() -> int", &empty_block_cache);
  m.def("block_cache_bytes() -> int[]", &block_cache_bytes);
}
