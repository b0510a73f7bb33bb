// cpu.cpp - run-time choices: which instruction set the kernels use, and how many threads.
// Compiled once, with the baseline flags, so it runs on any x86-64 CPU.
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <omp.h>
#include <sched.h>

#include "fastdl.h"

namespace fastdl {

int best_isa() {
#if defined(FASTDL_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("bmi2"))
    return ISA_AVX2;
#endif
  return ISA_GENERIC;
}

static std::atomic<int> g_isa{best_isa()};
int active_isa() { return g_isa.load(std::memory_order_relaxed); }

bool set_isa(int isa) {
  if (isa < ISA_GENERIC || isa > best_isa()) return false;
  g_isa.store(isa, std::memory_order_relaxed);
  return true;
}

const char* isa_name(int isa) {
  switch (isa) {
    case ISA_AVX512: return "avx512";
    case ISA_AVX2: return "avx2";
    default: return "generic";
  }
}

// CPUs this process may run on: its affinity mask, lowered to a cgroup v2 CPU quota (cpu.max,
// as containers set it) when there is one.
int available_cpus() {
  int n = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = omp_get_num_procs();
  if (n <= 0) n = 1;
  if (std::FILE* f = std::fopen("/sys/fs/cgroup/cpu.max", "r")) {
    char quota[32] = {0};
    long long period = 0;
    if (std::fscanf(f, "%31s %lld", quota, &period) == 2 && std::strcmp(quota, "max") != 0 && period > 0) {
      const long long q = std::atoll(quota);
      const long long cpus = (q + period - 1) / period;
      if (cpus >= 1 && cpus < n) n = static_cast<int>(cpus);
    }
    std::fclose(f);
  }
  return n;
}

static int capped(int n) {
  const int most = available_cpus();
  return n < 1 ? 1 : n > most ? most : n;
}

int default_num_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    int n = std::atoi(env);  // "4" or "4,2" (nested levels): the first level counts
    if (n > 0) return capped(n);
  }
  return available_cpus();
}

static std::atomic<int> g_threads{default_num_threads()};

int get_num_threads() { return g_threads.load(std::memory_order_relaxed); }

// More threads than CPUs only adds waiting at every barrier, and a count in the tens of thousands
// makes libgomp fail to create them (it exits the process, or crashes): capped at available_cpus().
void set_num_threads(int n) { g_threads.store(capped(n), std::memory_order_relaxed); }

// ---- contention guard
// A parallel region ends when its last thread does. When other processes keep the CPUs busy, a
// worker thread waits for a CPU for a scheduler time slice and the region waits with it: 2 threads
// ran a batch-32 training step 10-100x slower than 1, and one such wait measured 13 ms here. So each
// region reports how long its master waited for the other threads (team_report); a region that lost
// more than half its time that way, and over kStallNs, is a stall; after a burst of them kernels run on
// as many threads as there are CPUs that other processes leave free, at least one. That count is
// measured from /proc/stat (idle time of this process's CPUs) and this process's own CPU time over
// windows of a check period, so the load going away is seen within one period. The period is
// kCheckMin, doubling up to kCheckMax while stalls keep coming within kCalmNs of each other.
// Without /proc/stat, the period passes on one thread and the next region probes with all.
constexpr int64_t kStallNs = 1000000;         // 1 ms: far above a warm region (1-2 us) or a wake-up (20-50 us)
constexpr int64_t kCheckMin = 100000000;      // 0.1 s: /proc/stat counts in 10 ms ticks
constexpr int64_t kCheckMax = 1600000000;     // 1.6 s
constexpr int64_t kCalmNs = 4000000000;       // 4 s
constexpr int kBurst = 3;                     // stalls in a burst that engage the guard
constexpr int64_t kBurstNs = 50000000;        // 50 ms: stalls further apart start a new burst

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

static int64_t process_cpu_ns() {
  timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Idle (+ iowait) time of the CPUs in this process's affinity mask, in ns; -1 if /proc/stat cannot
// be read.
static int64_t idle_ns() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return -1;
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return -1;
  static const long hz = sysconf(_SC_CLK_TCK);
  char line[512];
  long long ticks = 0;
  int seen = 0;
  while (std::fgets(line, sizeof line, f)) {
    int cpu;
    unsigned long long user, nice, sys, idle, iowait;
    if (std::strncmp(line, "cpu", 3) != 0) break;  // the cpu lines come first
    if (std::sscanf(line, "cpu%d %llu %llu %llu %llu %llu", &cpu, &user, &nice, &sys, &idle, &iowait) != 6) continue;
    if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &set)) continue;
    ticks += static_cast<long long>(idle + iowait);
    ++seen;
  }
  std::fclose(f);
  if (!seen || hz <= 0) return -1;
  return static_cast<int64_t>(ticks) * (1000000000 / hz);
}

static std::mutex g_guard_mutex;              // taken by the stall and the check paths only
static std::atomic<int> g_cap{0};             // threads allowed while guarding; 0: not guarding
static std::atomic<int64_t> g_next_check{0};  // now_ns() of the next check of the free CPUs
static int64_t g_period = kCheckMin;          // under g_guard_mutex, as are the next three
static int64_t g_last_stall = INT64_MIN / 2;
static int64_t g_snap_at = 0, g_snap_idle = -1, g_snap_self = 0;
static int64_t g_burst_start = 0, g_burst_last = INT64_MIN / 2, g_burst_lost = 0;  // the stalls of a burst
static int g_burst_count = 0;
static std::atomic<int64_t> g_stalls{0}, g_stalled_regions{0}, g_guarded_regions{0}, g_regions{0}, g_lost{0},
    g_stalled_lost{0}, g_max_lost{0};
// FASTDL_CONTENTION_GUARD=0 (or off, false, no) starts the process with the guard off.
static bool guard_from_env() {
  const char* v = std::getenv("FASTDL_CONTENTION_GUARD");
  if (!v) return true;
  return !(std::strcmp(v, "0") == 0 || strcasecmp(v, "off") == 0 || strcasecmp(v, "false") == 0 ||
           strcasecmp(v, "no") == 0);
}
static std::atomic<bool> g_guard{guard_from_env()};

// Start a window of the free-CPU measurement (g_guard_mutex held).
static void snapshot(int64_t now) {
  g_snap_at = now;
  g_snap_idle = idle_ns();
  g_snap_self = process_cpu_ns();
  g_next_check.store(now + g_period, std::memory_order_relaxed);
}

// CPUs of the affinity mask that other processes left free over the window now ending, rounded
// down, at least 1; get_num_threads() when /proc/stat is unreadable (probe them again).
static int free_cpus(int64_t now) {
  const int want = get_num_threads();
  const int64_t idle = idle_ns();
  if (idle < 0 || g_snap_idle < 0) return want;
  const double window = static_cast<double>(now - g_snap_at);
  const double cpus = static_cast<double>(available_cpus());
  const double others = (cpus * window - static_cast<double>(idle - g_snap_idle) -
                         static_cast<double>(process_cpu_ns() - g_snap_self)) / window;
  const int n = static_cast<int>(cpus - others + 0.25);  // 1.75 free CPUs are 2
  return n < 1 ? 1 : n > want ? want : n;
}

int team_threads() {
  const int n = get_num_threads();
  if (n <= 1) return 1;
  int cap = g_cap.load(std::memory_order_relaxed);
  if (cap == 0 || !g_guard.load(std::memory_order_relaxed)) return n;
  if (now_ns() >= g_next_check.load(std::memory_order_relaxed) && g_guard_mutex.try_lock()) {
    const int64_t now = now_ns();
    if (now >= g_next_check.load(std::memory_order_relaxed)) {
      // A window far longer than the period (no kernel wanted threads meanwhile) says more about
      // then than now, and this process's own other threads may have kept the other work off the
      // CPUs: measure a fresh one first.
      cap = now - g_snap_at > 2 * g_period ? cap : free_cpus(now);
      if (cap >= n) {
        cap = 0;  // every thread has a CPU again
        g_next_check.store(INT64_MAX, std::memory_order_relaxed);
      } else {
        snapshot(now);
      }
      g_cap.store(cap, std::memory_order_relaxed);
    }
    g_guard_mutex.unlock();
    if (cap == 0) return n;
  }
  g_guarded_regions.fetch_add(1, std::memory_order_relaxed);
  return cap < n ? cap : n;
}

void team_report(int64_t wall_ns, int64_t lost_ns) {
  g_regions.fetch_add(1, std::memory_order_relaxed);
  g_lost.fetch_add(lost_ns, std::memory_order_relaxed);
  const bool stalled = lost_ns >= kStallNs && 2 * lost_ns >= wall_ns;
  if (stalled) {
    g_stalled_regions.fetch_add(1, std::memory_order_relaxed);
    g_stalled_lost.fetch_add(lost_ns, std::memory_order_relaxed);
    if (lost_ns > g_max_lost.load(std::memory_order_relaxed)) g_max_lost.store(lost_ns, std::memory_order_relaxed);
  }
  if (!stalled || !g_guard.load(std::memory_order_relaxed)) return;
  // One stall is no reason: an idle machine has them too (here ~1 in 200 ms of 2-thread regions,
  // 1-6 ms each: the other virtual CPU held up; and the first region after a pause waits for its
  // worker to wake). A worker that waits for a CPU another process holds stalls region after region.
  // So the guard engages at the kBurst-th stall of a burst (stalls under kBurstNs apart) once the
  // burst has lost over a third of its time.
  std::lock_guard<std::mutex> lock(g_guard_mutex);
  const int64_t now = now_ns();
  if (now - g_burst_last > kBurstNs) {
    g_burst_start = now - wall_ns;
    g_burst_count = 0;
    g_burst_lost = 0;
  }
  g_burst_last = now;
  g_burst_lost += lost_ns;
  if (++g_burst_count < kBurst || 3 * g_burst_lost < now - g_burst_start) return;
  g_burst_last = INT64_MIN / 2;  // the next burst starts afresh
  g_period = now - g_last_stall > kCalmNs ? kCheckMin : (2 * g_period < kCheckMax ? 2 * g_period : kCheckMax);
  g_last_stall = now;
  snapshot(now);
  const int n = get_num_threads();
  const int cap = g_cap.load(std::memory_order_relaxed);
  g_cap.store(cap == 0 ? (n > 2 ? n - 1 : 1) : (cap > 1 ? cap - 1 : 1), std::memory_order_relaxed);
  g_stalls.fetch_add(1, std::memory_order_relaxed);
}

// Off, kernels use every thread and stalls are not counted; what was measured stays for when it is
// turned on again.
void set_contention_guard(bool on) { g_guard.store(on, std::memory_order_relaxed); }

bool contention_guard() { return g_guard.load(std::memory_order_relaxed); }

TeamStats team_stats() {
  return TeamStats{g_regions.load(std::memory_order_relaxed), g_stalled_regions.load(std::memory_order_relaxed),
                   g_stalls.load(std::memory_order_relaxed),
                   g_guarded_regions.load(std::memory_order_relaxed), g_cap.load(std::memory_order_relaxed),
                   g_lost.load(std::memory_order_relaxed), g_stalled_lost.load(std::memory_order_relaxed),
                   g_max_lost.load(std::memory_order_relaxed)};
}

}  // namespace fastdl
