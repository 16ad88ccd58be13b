// A bounded least-recently-used cache of cuFFT plans, and the CUDA-graph-capture check the
// cuFFT path makes before creating one. Host code only.
//
// Plans hold device memory and, with LTO callbacks, kernels linked at creation, so:
// - the cache keeps at most `capacity` entries; adding one more destroys the least recently
//   used, after the device has finished the work already queued (its kernels may still read
//   the plan's tables); entries are shared_ptr so a caller that looked one up keeps it alive;
// - nothing is created while the calling stream captures a CUDA graph (creation allocates
//   and links, and eviction synchronises the device, neither of which capture allows): the
//   caller gets a clear error instead, and makes the plans by running the op once before
//   capturing.
#pragma once

#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "common.cuh"

namespace spectformer {

// Capacity of each plan cache (plain and callback plans): a model uses a handful of shapes;
// a sweep over many shapes must not keep every plan's device memory for good.
constexpr size_t kMaxCachedPlans = 32;

template <typename Key, typename Plan>
class PlanCache {
 public:
  explicit PlanCache(size_t capacity) : capacity_(capacity) {}

  // The cached plan, now the most recently used, or null.
  std::shared_ptr<Plan> find(const Key& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return it->second->second;
  }

  // Adds a plan; evicts the least recently used beyond the capacity. `before_evict` runs
  // once before any plan is dropped (it makes queued device work finish).
  template <typename BeforeEvict>
  void insert(const Key& key, std::shared_ptr<Plan> plan, BeforeEvict&& before_evict) {
    order_.emplace_front(key, std::move(plan));
    index_[key] = order_.begin();
    bool waited = false;
    while (order_.size() > capacity_) {
      if (!waited) {
        before_evict();
        waited = true;
      }
      index_.erase(order_.back().first);
      order_.pop_back();
      ++evictions_;
    }
  }

  size_t size() const { return order_.size(); }
  size_t evictions() const { return evictions_; }

 private:
  using Entry = std::pair<Key, std::shared_ptr<Plan>>;
  size_t capacity_;
  size_t evictions_ = 0;
  std::list<Entry> order_;  // most recently used first
  std::map<Key, typename std::list<Entry>::iterator> index_;
};

// Whether `stream` is capturing a CUDA graph (or a pending error prevents knowing it).
inline Status stream_is_capturing(cudaStream_t stream, bool* capturing) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  SPECTFORMER_CUDA_TRY(cudaStreamIsCapturing(stream, &status));
  *capturing = status != cudaStreamCaptureStatusNone;
  return Status();
}

inline Status no_plans_during_capture(const std::string& what) {
  return "cuFFT path: no cached cuFFT plan for " + what +
         " on this device, and plans cannot be made while the stream is capturing a CUDA "
         "graph (creating one allocates device memory and links kernels): run the op once "
         "with this shape before capturing";
}

}  // namespace spectformer
