// data.cpp - gathering a batch's rows for the DataLoader (fastdl/data.py): out[i] = src[idx[i]], row by row.
#include "data.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace fastdl {

namespace {

// One row of a fixed size: memcpy with a constant size compiles to plain loads and stores.
template <int64_t Bytes>
int64_t gather_fixed(char* out, const char* src, const volatile int64_t* idx, int64_t n_idx, int64_t n_rows,
                     int64_t* bad_value) {
  for (int64_t i = 0; i < n_idx; ++i) {
    const int64_t r = idx[i];  // read once (volatile: never re-read after the check)
    if (r < 0 || r >= n_rows) {
      *bad_value = r;
      return i;
    }
    std::memcpy(out + i * Bytes, src + r * Bytes, Bytes);
  }
  return -1;
}

}  // namespace

int64_t gather_rows(char* out, const char* src, const int64_t* idx, int64_t n_idx, int64_t n_rows,
                    int64_t row_bytes, int64_t* bad_value) {
  // src (n_rows, row_bytes), idx (n_idx,), out (n_idx, row_bytes)
  const volatile int64_t* vidx = idx;
  switch (row_bytes) {  // 1-D labels and targets: one element per row
    case 4: return gather_fixed<4>(out, src, vidx, n_idx, n_rows, bad_value);
    case 8: return gather_fixed<8>(out, src, vidx, n_idx, n_rows, bad_value);
    default: break;
  }
  for (int64_t i = 0; i < n_idx; ++i) {
    const int64_t r = vidx[i];
    if (r < 0 || r >= n_rows) {
      *bad_value = r;
      return i;
    }
    if (row_bytes > 0) std::memcpy(out + i * row_bytes, src + r * row_bytes, static_cast<size_t>(row_bytes));
  }
  return -1;
}

}  // namespace fastdl

// ---------------------------------------------------------------- RowPrefetcher

namespace fastdl {

RowPrefetcher::RowPrefetcher(std::vector<Source> sources, int slots)
    : sources_(std::move(sources)), slot_free_(static_cast<size_t>(slots), 1) {
  thread_ = std::thread([this] { run(); });
}

RowPrefetcher::~RowPrefetcher() { stop(); }

void RowPrefetcher::push(std::vector<Job> jobs) {
  bool idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle = queued_.empty();  // only then may the thread sleep without a timeout
    for (Job& job : jobs) queued_.push_back(std::move(job));
  }
  if (idle) work_cv_.notify_one();
}

void RowPrefetcher::release(uint64_t mask) {
  if (mask == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t s = 0; s < slot_free_.size(); ++s)
    if (mask >> s & 1) slot_free_[s] = 1;
  // No wake-up here: the thread polls for free slots (run()), so that handing over a batch costs the
  // training loop no system call; take() wakes it when the consumer would otherwise wait.
}

bool RowPrefetcher::take(Result* result, int timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  if (done_.empty()) {
    work_cv_.notify_one();  // the thread may be polling for a slot released since
    if (timeout_ms <= 0) return false;
  }
  if (done_.empty() &&
      !done_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [this] { return !done_.empty() || stop_; }))
    return false;
  if (done_.empty()) return false;  // stopped
  *result = done_.front();
  done_.pop_front();
  return true;
}

int64_t RowPrefetcher::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queued_.size() + done_.size()) + running_;
}

void RowPrefetcher::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  done_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RowPrefetcher::run() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Nothing queued: sleep until push() or stop(). A job waiting for its slot: poll, from 50 us backing
      // off to 1 ms (release() does not wake the thread; take() does when the consumer has to wait).
      auto poll = std::chrono::microseconds(50);
      while (!stop_ && !(!queued_.empty() && slot_free_[static_cast<size_t>(queued_.front().slot)])) {
        if (queued_.empty()) {
          work_cv_.wait(lock);
        } else {
          work_cv_.wait_for(lock, poll);
          poll = std::min(poll * 2, std::chrono::microseconds(1000));
        }
      }
      if (stop_) return;
      job = std::move(queued_.front());
      queued_.pop_front();
      slot_free_[static_cast<size_t>(job.slot)] = 0;
      running_ = 1;
    }
    const int64_t n = static_cast<int64_t>(job.idx.size());
    for (size_t k = 0; k < sources_.size() && job.result.bad_at < 0; ++k) {
      const Source& s = sources_[k];
      const int64_t bad = gather_rows(job.outs[k], s.data, job.idx.data(), n, s.rows, s.row_bytes,
                                      &job.result.bad_value);
      if (bad >= 0) {
        job.result.bad_at = bad;
        job.result.bad_source = static_cast<int>(k);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_.push_back(job.result);
      running_ = 0;
    }
    done_cv_.notify_one();
  }
}

}  // namespace fastdl
