// data.cpp - the data family's bindings (csrc/data.cpp): fastdl._C.gather_rows.
//
// Same contract as the other bindings (common.h): nothing converted or copied silently; every argument
// checked, errors naming the function and the argument (TypeError for types, dtypes and layouts, ValueError for shapes and
// values); the GIL released around the kernel only. The rows are copied as bytes, so src may have any dtype
// that holds no Python objects.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common.h"
#include "data.h"

namespace fastdl {
namespace {

constexpr const char* kFn = "gather_rows";

std::string shape_text(const py::array& a) { return shape_str(shape_of(a)); }

[[noreturn]] void gather_type_error(const std::string& msg) { type_error(std::string(kFn) + ": " + msg); }
[[noreturn]] void gather_value_error(const std::string& msg) { value_error(std::string(kFn) + ": " + msg); }

// An array of any dtype (rows are copied as bytes), C-contiguous.
py::array take(py::handle h, const char* arg) {
  if (!py::isinstance<py::array>(h)) gather_type_error(std::string(arg) + " must be a numpy.ndarray, got " + type_name(h));
  py::array a = py::reinterpret_borrow<py::array>(h);
  if (!(a.flags() & py::array::c_style))
    gather_type_error(std::string(arg) + " must be C-contiguous, got a strided view of shape " + shape_text(a) +
                      " (use np.ascontiguousarray(" + arg + "))");
  return a;
}

constexpr std::uint64_t kItemHasObject = 0x01;  // NPY_ITEM_HASOBJECT: the items hold PyObject pointers

py::array take_i64_vector(py::handle h, const char* fn, const char* arg) {
  py::array a = in_i64(h, fn, arg);
  require_ndim(fn, arg, a, 1, "(n,)");
  return a;
}

py::array gather_rows_binding(py::handle src_h, py::handle idx_h, py::handle out_h) {
  // src (R, ...) any dtype without objects; idx (B,) int64; out (B, ...) the dtype of src
  py::array src = take(src_h, "src");
  if (src.ndim() < 1) gather_value_error("src must have at least 1 dimension (rows first), got a 0-D array");
  if (src.dtype().flags() & kItemHasObject)
    gather_type_error("src has dtype " + std::string(py::str(src.dtype())) +
               ", which holds Python objects; gather_rows copies rows as bytes (use numeric data)");

  py::array idx = take_i64_vector(idx_h, kFn, "idx");

  const int64_t n_idx = idx.shape(0), n_rows = src.shape(0);
  std::vector<py::ssize_t> want(src.shape(), src.shape() + src.ndim());
  want[0] = n_idx;
  py::array out;
  if (out_h.is_none()) {
    out = py::array(src.dtype(), want);
  } else {
    out = take(out_h, "out");
    if (!out.dtype().equal(src.dtype()))
      gather_type_error("out must have the dtype of src, " + std::string(py::str(src.dtype())) + ", got " +
                 std::string(py::str(out.dtype())));
    bool same = out.ndim() == src.ndim();
    for (py::ssize_t d = 0; same && d < out.ndim(); ++d) same = out.shape(d) == want[d];
    if (!same) {
      std::ostringstream os;
      os << "(";
      for (size_t d = 0; d < want.size(); ++d) os << (d ? ", " : "") << want[d];
      os << (want.size() == 1 ? ",)" : ")");
      gather_value_error("out has shape " + shape_text(out) + ", expected (len(idx),) + src.shape[1:] = " + os.str());
    }
    if (!out.writeable()) gather_value_error("out is read-only");
    if (overlaps(out, src)) gather_value_error("out must not share memory with src");
    if (overlaps(out, idx)) gather_value_error("out must not share memory with idx");
  }

  int64_t row_bytes = static_cast<int64_t>(src.itemsize());
  for (py::ssize_t d = 1; d < src.ndim(); ++d) row_bytes *= src.shape(d);
  const char* sp = static_cast<const char*>(src.data());
  const int64_t* ip = static_cast<const int64_t*>(idx.data());
  char* op = static_cast<char*>(out.mutable_data());
  int64_t bad_value = 0, bad_at;
  {
    py::gil_scoped_release nogil;
    bad_at = fastdl::gather_rows(op, sp, ip, n_idx, n_rows, row_bytes, &bad_value);
  }
  if (bad_at >= 0)
    gather_value_error("idx[" + std::to_string(bad_at) + "] = " + std::to_string(bad_value) + " is out of range for src with " +
                std::to_string(n_rows) + " rows (indices must be in [0, " + std::to_string(n_rows) +
                "); negative indices are not wrapped)");
  return out;
}


// ---- RowPrefetcher: the DataLoader's native background thread (csrc/data.h)

class PyRowPrefetcher {
 public:
  PyRowPrefetcher(py::list sources, int slots) {
    const char* fn = "RowPrefetcher";
    if (slots < 1 || slots > 64)
      throw py::value_error(std::string(fn) + ": slots must be in [1, 64], got " + std::to_string(slots));
    if (sources.size() == 0) throw py::value_error(std::string(fn) + ": sources must hold at least one array");
    std::vector<fastdl::RowPrefetcher::Source> srcs;
    for (size_t k = 0; k < sources.size(); ++k) {
      const std::string arg = "sources[" + std::to_string(k) + "]";
      if (!py::isinstance<py::array>(sources[k]))
        throw py::type_error(std::string(fn) + ": " + arg + " must be a numpy.ndarray, got " + type_name(sources[k]));
      py::array a = py::reinterpret_borrow<py::array>(sources[k]);
      if (a.ndim() < 1) throw py::value_error(std::string(fn) + ": " + arg + " must have a first axis of rows");
      if (a.dtype().flags() & kItemHasObject)
        throw py::type_error(std::string(fn) + ": " + arg + " holds Python objects; rows are copied as bytes");
      if (!(a.flags() & py::array::c_style))
        throw py::type_error(std::string(fn) + ": " + arg + " must be C-contiguous");
      if (!srcs.empty() && a.shape(0) != srcs[0].rows)
        throw py::value_error(std::string(fn) + ": every source must have the same number of rows");
      int64_t row_bytes = static_cast<int64_t>(a.itemsize());
      for (py::ssize_t d = 1; d < a.ndim(); ++d) row_bytes *= a.shape(d);
      srcs.push_back({static_cast<const char*>(a.data()), static_cast<int64_t>(a.shape(0)), row_bytes});
      sources_.push_back(a);
    }
    slots_ = slots;
    impl_ = std::make_unique<fastdl::RowPrefetcher>(std::move(srcs), slots);
  }

  // Queue jobs: job j copies rows idx[bounds[j]:bounds[j+1]] of every source into the first rows of the
  // buffers of ring slot (first_slot + j) % slots; bufs[s] holds slot s's buffers, one per source.
  void push(py::handle idx_h, py::handle bounds_h, int first_slot, py::handle bufs_h, py::handle items_h) {
    const char* fn = "RowPrefetcher.push";
    if (!impl_) throw py::value_error(std::string(fn) + ": the prefetcher is closed");
    if (first_slot < 0 || first_slot >= slots_)
      throw py::value_error(std::string(fn) + ": first_slot must be in [0, " + std::to_string(slots_) + "), got " +
                            std::to_string(first_slot));
    py::array idx = take_i64_vector(idx_h, fn, "idx");
    py::array bounds = take_i64_vector(bounds_h, fn, "bounds");
    const int64_t n_idx = idx.shape(0), n_jobs = bounds.shape(0) - 1;
    const int64_t* bp = static_cast<const int64_t*>(bounds.data());
    if (n_jobs < 0 || bp[0] != 0 || bp[n_jobs] != n_idx)
      throw py::value_error(std::string(fn) + ": bounds must run from 0 to len(idx)");
    for (int64_t j = 0; j < n_jobs; ++j)
      if (bp[j + 1] < bp[j]) throw py::value_error(std::string(fn) + ": bounds must not decrease");
    if (!py::isinstance<py::list>(bufs_h) || py::len(bufs_h) != static_cast<size_t>(slots_))
      throw py::type_error(std::string(fn) + ": bufs must be a list of " + std::to_string(slots_) + " lists of arrays");
    py::list bufs = py::reinterpret_borrow<py::list>(bufs_h);
    const size_t K = sources_.size();
    std::vector<std::vector<py::array>> slot_bufs(static_cast<size_t>(slots_));
    for (int s = 0; s < slots_; ++s) {
      py::handle row = bufs[static_cast<size_t>(s)];
      if (!py::isinstance<py::list>(row) || py::len(row) != K)
        throw py::type_error(std::string(fn) + ": bufs[" + std::to_string(s) + "] must be a list of " + std::to_string(K) +
                             " arrays, one per source");
      py::list lst = py::reinterpret_borrow<py::list>(row);
      for (size_t k = 0; k < K; ++k) {
        const std::string arg = "bufs[" + std::to_string(s) + "][" + std::to_string(k) + "]";
        py::handle h = lst[k];
        if (!py::isinstance<py::array>(h)) throw py::type_error(std::string(fn) + ": " + arg + " must be a numpy.ndarray");
        py::array o = py::reinterpret_borrow<py::array>(h);
        const py::array& src = sources_[k];
        if (!o.dtype().equal(src.dtype())) throw py::type_error(std::string(fn) + ": " + arg + " must have its source's dtype");
        bool same = o.ndim() == src.ndim();
        for (py::ssize_t d = 1; same && d < o.ndim(); ++d) same = o.shape(d) == src.shape(d);
        if (!same)
          throw py::value_error(std::string(fn) + ": " + arg + " has shape " + shape_text(o) +
                                ", expected (capacity,) + its source's row shape");
        if (!(o.flags() & py::array::c_style)) throw py::type_error(std::string(fn) + ": " + arg + " must be C-contiguous");
        if (!o.writeable()) throw py::value_error(std::string(fn) + ": " + arg + " is read-only");
        for (const py::array& other : sources_)
          if (overlaps(o, other)) throw py::value_error(std::string(fn) + ": " + arg + " must not share memory with a source");
        slot_bufs[static_cast<size_t>(s)].push_back(o);
      }
    }
    if (!py::isinstance<py::list>(items_h) || py::len(items_h) != static_cast<size_t>(n_jobs))
      throw py::type_error(std::string(fn) + ": items must be a list of one object per job (what next() returns)");
    py::list items = py::reinterpret_borrow<py::list>(items_h);
    for (int64_t j = 0; j < n_jobs; ++j) {
      const auto& sb = slot_bufs[static_cast<size_t>((first_slot + j) % slots_)];
      for (const py::array& o : sb)
        if (bp[j + 1] - bp[j] > o.shape(0))
          throw py::value_error(std::string(fn) + ": job " + std::to_string(j) + " has " + std::to_string(bp[j + 1] - bp[j]) +
                                " rows, more than its slot's buffers hold (" + std::to_string(o.shape(0)) + ")");
    }
    const int64_t* ip = static_cast<const int64_t*>(idx.data());
    std::vector<fastdl::RowPrefetcher::Job> jobs(static_cast<size_t>(n_jobs));
    for (int64_t j = 0; j < n_jobs; ++j) {
      const int s = static_cast<int>((first_slot + j) % slots_);
      auto& job = jobs[static_cast<size_t>(j)];
      job.slot = s;
      job.idx.assign(ip + bp[j], ip + bp[j + 1]);  // copied: the caller may reuse idx at once
      std::vector<py::object> keep;
      for (py::array& o : slot_bufs[static_cast<size_t>(s)]) {
        job.outs.push_back(static_cast<char*>(o.mutable_data()));
        keep.push_back(o);
      }
      keep_.push_back(std::move(keep));
      entries_.push_back({s, items[static_cast<size_t>(j)]});
    }
    impl_->push(std::move(jobs));
  }

  // A batch that needs no gathering (a view of the sources), handed out in its turn.
  void push_ready(py::object item) { entries_.push_back({-1, std::move(item)}); }

  // No more batches will be pushed.
  void set_exhausted() { exhausted_ = true; }

  // The next batch (what was pushed for it), after waiting for its job; None when fewer than the low-water
  // mark (set_low_water) are queued and more may come (the caller pushes more, then calls again), or when all have been handed
  // out. The batch handed out two calls before stops being valid here: its slot goes back to the thread,
  // `group` slots at a time.
  py::object next() {
    if (entries_.empty() || (!exhausted_ && entries_.size() < static_cast<size_t>(low_water_))) return py::none();
    Entry e = std::move(entries_.front());
    entries_.pop_front();
    held_.push_back(e.slot);
    if (held_.size() > 2) {
      const int r = held_.front();
      held_.pop_front();
      if (r >= 0) {
        release_mask_ |= uint64_t{1} << r;
        ++n_released_;
      }
    }
    uint64_t mask = 0;
    if (n_released_ >= group_) {
      mask = release_mask_;
      release_mask_ = 0;
      n_released_ = 0;
    }
    if (e.slot >= 0) {
      take(mask);
    } else if (mask && impl_) {
      impl_->release(mask);
    }
    return e.item;
  }

  void set_group(int group) { group_ = group < 1 ? 1 : group; }
  void set_low_water(int n) { low_water_ = n < 1 ? 1 : n; }

  // Release the slots in release_mask (bit s: the consumer is done with slot s's batch), then wait for the
  // oldest job.
  void take(uint64_t release_mask) {
    const char* fn = "RowPrefetcher.take";
    if (!impl_) throw py::value_error(std::string(fn) + ": the prefetcher is closed");
    if (slots_ < 64 && release_mask >> slots_ != 0) throw py::value_error(std::string(fn) + ": release_mask names a slot out of range");
    impl_->release(release_mask);
    if (keep_.empty()) throw py::value_error(std::string(fn) + ": no job is pending");
    fastdl::RowPrefetcher::Result r;
    // Usually the batch is there: take it without giving up the GIL.
    for (bool ok = impl_->take(&r, 0); !ok;) {
      {
        py::gil_scoped_release nogil;
        ok = impl_->take(&r, 50);
      }
      if (!ok && PyErr_CheckSignals() != 0) throw py::error_already_set();  // Ctrl-C while waiting
    }
    keep_.pop_front();
    if (r.bad_at >= 0) {
      const py::array& s = sources_[static_cast<size_t>(r.bad_source)];
      throw py::value_error("gather_rows: idx[" + std::to_string(r.bad_at) + "] = " + std::to_string(r.bad_value) +
                            " is out of range for src with " + std::to_string(s.shape(0)) + " rows (indices must be in [0, " +
                            std::to_string(s.shape(0)) + "); negative indices are not wrapped)");
    }
  }

  void release(uint64_t mask) {
    if (!impl_) throw py::value_error("RowPrefetcher.release: the prefetcher is closed");
    if (slots_ < 64 && mask >> slots_ != 0) throw py::value_error("RowPrefetcher.release: mask names a slot out of range");
    impl_->release(mask);
  }

  int64_t pending() const { return static_cast<int64_t>(keep_.size()); }

  void close() {
    if (!impl_) return;
    {
      py::gil_scoped_release nogil;
      impl_->stop();
    }
    impl_.reset();
    keep_.clear();
    entries_.clear();
  }

  ~PyRowPrefetcher() {
    if (impl_) impl_->stop();  // the thread never takes the GIL: joining with it held is safe
  }

 private:
  std::vector<py::array> sources_;
  std::unique_ptr<fastdl::RowPrefetcher> impl_;
  std::deque<std::vector<py::object>> keep_;  // each pushed job's outputs, alive until taken
  struct Entry {
    int slot;  // -1: no job (a view)
    py::object item;
  };
  std::deque<Entry> entries_;  // batches pushed, not yet handed out
  std::deque<int> held_;       // slots of the last batches handed out (still valid)
  uint64_t release_mask_ = 0;
  int n_released_ = 0, group_ = 1, low_water_ = 1;
  bool exhausted_ = false;
  int slots_ = 0;
};

}  // namespace

void bind_data(py::module_& m) {
  m.def("gather_rows", &gather_rows_binding, py::arg("src"), py::arg("idx"), py::arg("out") = py::none(),
        "out[i] = src[idx[i]] for every i: the rows (first axis) of a C-contiguous array of any numeric dtype, "
        "copied as bytes; idx int64 (B,), every index checked against the row count; out (B,) + src.shape[1:] "
        "of src's dtype, C-contiguous and writeable (allocated when None). Returns out.");
  py::class_<PyRowPrefetcher>(m, "RowPrefetcher",
                              "The DataLoader's native background thread: gathers batches into ring slots without the GIL.")
      .def(py::init<py::list, int>(), py::arg("sources"), py::arg("slots"))
      .def("push", &PyRowPrefetcher::push, py::arg("idx"), py::arg("bounds"), py::arg("first_slot"), py::arg("bufs"),
           py::arg("items"),
           "Queue jobs: job j gathers rows idx[bounds[j]:bounds[j+1]] of every source into the first rows of the "
           "buffers bufs[s] of ring slot s = (first_slot + j) % slots (the thread waits until that slot has been "
           "released); next() hands out items[j] once job j is done. The indices are copied at once.")
      .def("push_ready", &PyRowPrefetcher::push_ready, py::arg("item"), "Queue a batch that needs no gathering.")
      .def("set_exhausted", &PyRowPrefetcher::set_exhausted, "No more batches will be pushed.")
      .def("set_group", &PyRowPrefetcher::set_group, py::arg("group"), "Slots given back to the thread at a time.")
      .def("set_low_water", &PyRowPrefetcher::set_low_water, py::arg("n"),
           "next() returns None (push more) while fewer than n batches are queued and more may come.")
      .def("next", &PyRowPrefetcher::next,
           "The next batch once gathered; None when more should be pushed first or when none is left.")
      .def("take", &PyRowPrefetcher::take, py::arg("release_mask"),
           "Release the slots whose bits are set in release_mask, then wait for the oldest pending job (ValueError "
           "for a bad index).")
      .def("release", &PyRowPrefetcher::release, py::arg("mask"),
           "The consumer is done with the batches of the slots whose bits are set in mask.")
      .def("pending", &PyRowPrefetcher::pending)
      .def("close", &PyRowPrefetcher::close, "Stop and join the thread.");
}

}  // namespace fastdl
