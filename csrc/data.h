// data.h - the data-loading kernels (csrc/data.cpp), compiled once, not per instruction set: they copy
// bytes, and run single-threaded in the DataLoader's background thread (fastdl/data.py).
#pragma once
#include <cstdint>

namespace fastdl {

// Copies rows idx[0..n_idx) of src into out, in order: out row i = src row idx[i].
//   src (n_rows, row_bytes) bytes, idx (n_idx,), out (n_idx, row_bytes) bytes; out must not overlap src or idx.
// Every index is read once into a local and checked against [0, n_rows) before it is used, so the copy stays
// in bounds even if another thread writes into idx meanwhile. Returns -1 when every index was in range, else
// the position of the first bad one (its value in *bad_value): rows before it have been copied, none after.
// No allocation, no exception, no threads.
int64_t gather_rows(char* out, const char* src, const int64_t* idx, int64_t n_idx, int64_t n_rows,
                    int64_t row_bytes, int64_t* bad_value);

}  // namespace fastdl

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace fastdl {

// A background thread that gathers batches for the DataLoader without ever taking the GIL (a Python thread
// would need it for every step and waits up to the interpreter's switch interval, 5 ms, to get it back from a
// training loop). Jobs run in the order pushed; job j writes into ring slot `slot`, and waits until the
// consumer has released that slot (a slot is busy from when a job starts writing it until it is released). At
// most 64 slots.
// The caller keeps the sources and every job's outputs alive until the job has been taken (take()).
class RowPrefetcher {
 public:
  struct Source {
    const char* data;
    int64_t rows, row_bytes;
  };
  struct Result {
    int64_t bad_at = -1, bad_value = 0;  // first out-of-range index (position, value); -1: none
    int bad_source = -1;
  };

  RowPrefetcher(std::vector<Source> sources, int slots);
  ~RowPrefetcher();
  RowPrefetcher(const RowPrefetcher&) = delete;
  RowPrefetcher& operator=(const RowPrefetcher&) = delete;

  // A job: copy rows idx of every source into outs[k] (one output per source) in ring slot `slot`.
  struct Job {
    int slot;
    std::vector<int64_t> idx;
    std::vector<char*> outs;
    Result result;
  };
  // Queue jobs, in order (a wake-up of the thread only when its queue was empty).
  void push(std::vector<Job> jobs);
  // The consumer is done with the slots whose bits are set in `mask` (their batches may be overwritten now).
  // No system call: the thread polls for free slots while a job waits for one (50 us backing off to 1 ms),
  // and take() wakes it when the consumer would have to wait.
  void release(uint64_t mask);
  // Wait up to timeout_ms (0: not at all) for the oldest job not yet taken; true (and its result) when it was
  // done and has been taken, false on timeout. Call only with a job pending.
  bool take(Result* result, int timeout_ms);
  int64_t pending() const;
  // Stop the thread (the job it is copying completes first) and join it. Idempotent.
  void stop();

 private:
  void run();

  std::vector<Source> sources_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<Job> queued_;   // pushed, not yet started
  std::deque<Result> done_;  // finished, not yet taken
  int64_t running_ = 0;      // jobs started and not finished (0 or 1)
  std::vector<char> slot_free_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace fastdl
