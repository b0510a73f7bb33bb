// system.cpp - what is not a kernel: threads, instruction set, build configuration, the contention guard.
#include "common.h"

namespace fastdl {

void bind_system(py::module_& m) {
  m.def("get_num_threads", &get_num_threads, "Threads a parallel kernel may use.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
        set_num_threads(n);
      },
      py::arg("n"), "Set the threads parallel kernels may use (default: the CPUs this process may use).");
  m.def("default_num_threads", &default_num_threads);
  m.def("available_cpus", &available_cpus, "CPUs this process may use (affinity mask, cgroup CPU quota).");
  m.def("set_contention_guard", &set_contention_guard, py::arg("on").noconvert(),
        "Turn the contention guard on (default) or off.");
  m.def("contention_guard", &contention_guard);
  m.def(
      "contention_stats",
      [] {
        const TeamStats s = team_stats();
        py::dict d;
        d["regions"] = s.regions;
        d["stalled_regions"] = s.stalled_regions;
        d["stalls"] = s.stalls;
        d["guarded_regions"] = s.guarded_regions;
        d["threads_cap"] = s.cap;
        d["waited_s"] = static_cast<double>(s.lost_ns) * 1e-9;
        d["waited_in_stalls_s"] = static_cast<double>(s.stalled_lost_ns) * 1e-9;
        d["longest_wait_s"] = static_cast<double>(s.max_lost_ns) * 1e-9;
        return d;
      },
      "The contention guard since the process started: parallel regions run, stalled regions, times it "
      "engaged, kernel calls it limited, time masters waited for their team; threads_cap is its limit now "
      "(0: none).");
  m.def("best_isa", [] { return std::string(isa_name(best_isa())); }, "Best instruction set this CPU runs.");
  m.def("get_isa", [] { return std::string(isa_name(active_isa())); }, "Instruction set the kernels use now.");
  m.def(
      "set_isa",
      [](const std::string& name) {
        int isa = name == "avx512" ? ISA_AVX512 : name == "avx2" ? ISA_AVX2 : name == "generic" ? ISA_GENERIC : -1;
        if (isa < 0) value_error("set_isa: name must be 'generic', 'avx2' or 'avx512', got '" + name + "'");
        if (!set_isa(isa))
          value_error("set_isa: this CPU cannot run '" + name + "' (best: '" + isa_name(best_isa()) + "')");
      },
      py::arg("name"), "Force the kernels onto an instruction set at or below the best this CPU runs.");
  m.def("config", [] {
    py::dict d;
    d["version"] = FASTDL_VERSION;
    d["compiler"] = FASTDL_COMPILER;
    d["openmp"] = std::to_string(_OPENMP);
    d["isa"] = isa_name(active_isa());
    d["best_isa"] = isa_name(best_isa());
    d["num_threads"] = get_num_threads();
    d["available_cpus"] = available_cpus();
    d["contention_guard"] = contention_guard();
    return d;
  });
}

}  // namespace fastdl
