// Stage 2, compile and cache: the translated units are compiled by the system C++ compiler into
// a shared object, cached under cache_dir() by a hash of everything that goes into it.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include "check.h"
#include "internal.h"

namespace metalsim {

using namespace detail;

namespace {

// Contents of the files named by #include "..." (recursively), for the cache key.
void hash_includes(
    Hasher& h,
    const std::string& text,
    const std::vector<std::string>& dirs,
    std::set<std::string>& seen,
    int depth) {
  if (depth > 16)
    return;
  size_t pos = 0;
  while ((pos = text.find("#include", pos)) != std::string::npos) {
    size_t q1 = text.find('"', pos);
    size_t nl = text.find('\n', pos);
    pos += 8;
    if (q1 == std::string::npos || (nl != std::string::npos && q1 > nl))
      continue;
    size_t q2 = text.find('"', q1 + 1);
    if (q2 == std::string::npos)
      continue;
    std::string name = text.substr(q1 + 1, q2 - q1 - 1);
    for (auto& d : dirs) {
      std::string p = d + "/" + name;
      if (file_exists(p)) {
        if (seen.insert(p).second) {
          std::string c = read_file(p);
          h.add(p);
          h.add(c);
          std::vector<std::string> dirs2 = dirs;
          dirs2.insert(dirs2.begin(), dirname_of(p));
          hash_includes(h, c, dirs2, seen, depth + 1);
        }
        break;
      }
    }
  }
}

bool compiler_is_clang(const std::string& cxx) {
  static std::mutex mu;
  static std::map<std::string, bool> known;
  std::lock_guard<std::mutex> lk(mu);
  auto it = known.find(cxx);
  if (it == known.end()) {
    std::string out;
    run_command({cxx, "--version"}, out);
    it = known.emplace(cxx, out.find("clang") != std::string::npos).first;
  }
  return it->second;
}

std::mutex g_libs_mu;
std::map<std::string, std::shared_ptr<Library>> g_libs;
// Compiles that failed in this process, by cache key -> the CompileError's message. A test run
// loads the same broken .metal file once per test; without this, each test would run the C++
// compiler again for the same error. A fixed source has another key, so it compiles afresh.
std::map<std::string, std::string> g_failed;
std::atomic<uint64_t> g_compiler_runs{0};

} // namespace

uint64_t compiler_runs() {
  return g_compiler_runs.load();
}

std::shared_ptr<Library> Library::from_files(
    const std::vector<std::string>& paths, const std::vector<std::string>& include_dirs) {
  if (paths.empty())
    throw Error("metalsim: a library needs at least one .metal file");
  std::vector<std::string> abs_paths, sources;
  for (auto& p : paths) {
    if (!file_exists(p))
      throw Error("metalsim: no such .metal file: '" + p + "'");
    abs_paths.push_back(absolute(p));
    sources.push_back(read_file(p));
  }
  return build(abs_paths, sources, include_dirs);
}

std::shared_ptr<Library> Library::from_source(
    const std::string& source,
    const std::string& name,
    const std::vector<std::string>& include_dirs) {
  return build({name}, {source}, include_dirs);
}

std::shared_ptr<Library> Library::from_manifest(const std::string& manifest_path) {
  std::ifstream f(manifest_path);
  if (!f)
    throw Error(
        "metalsim: cannot find the kernel library manifest '" + manifest_path +
        "' (it is written by metalsim_build_library in CMake, next to the extension)");
  std::vector<std::string> files, incs;
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("source ", 0) == 0)
      files.push_back(line.substr(7));
    else if (line.rfind("include ", 0) == 0)
      incs.push_back(line.substr(8));
  }
  return from_files(files, incs);
}

std::shared_ptr<Library> Library::build(
    const std::vector<std::string>& names,
    const std::vector<std::string>& sources,
    const std::vector<std::string>& include_dirs) {
  std::string rt = runtime_dir();
  if (!file_exists(rt + "/metal_stdlib"))
    throw Error(
        "metalsim: cannot find the runtime headers in '" + rt +
        "' (set METALSIM_HOME to the src/metalsim folder)");
  std::string cxx = compiler();
  std::vector<std::string> flags = {
      "-std=c++17",
      "-O2",
      "-fPIC",
      "-shared",
      "-pthread",
      "-fvisibility=hidden",
      "-fno-strict-aliasing",
      // Strict MSL: a variable-length array is an error (the kernel prelude poisons the C++
      // that MSL lacks; see explain_diagnostics). Other warnings are left out of error reports.
      "-Werror=vla",
      "-I" + rt,
      "-I" + include_dir()};
  if (!compiler_is_clang(cxx)) {
    // The call graph, to find recursion (MSL has none); tail calls stay calls so that a
    // tail-recursive function still shows its edge.
    flags.push_back("-fcallgraph-info");
    flags.push_back("-fno-optimize-sibling-calls");
  }
#if !defined(__APPLE__)
  // Stack probes: a frame larger than the space left on a fiber's stack touches the guard
  // under it (and faults, reported as a stack overflow) instead of jumping over it into another
  // thread's stack. (Apple's compilers probe large frames by default.)
  flags.push_back("-fstack-clash-protection");
#endif
  // The sanitizer's checks (see "the sanitizer" in runtime/metalsim_rt.h): every memory access
  // of a kernel calls the runtime's __tsan_* functions, and every typed one checks its pointer's
  // alignment (calling __ubsan_handle_type_mismatch_v1 if it is off); -g1 keeps the line tables
  // that name the .metal line of an access. The sanitizers' own runtimes are not linked.
  std::vector<std::string> link_libs;
  const char* checks = getenv_nonempty("METALSIM_CHECKS");
  if (!checks || std::string(checks) != "0") {
    flags.push_back("-fsanitize=thread,alignment");
    flags.push_back("-g1");
    if (compiler_is_clang(cxx)) {
      flags.push_back("-fno-sanitize-link-runtime");
    } else {
      flags.push_back("-nodefaultlibs");
      link_libs = {"-lstdc++", "-lm", "-lc", "-lgcc_s", "-lgcc"};
    }
  }
  std::vector<std::string> search_dirs;
  for (auto& n : names)
    if (!n.empty() && n[0] == '/')
      search_dirs.push_back(dirname_of(n));
  for (auto& d : include_dirs)
    search_dirs.push_back(absolute(d));
  for (auto& d : search_dirs)
    flags.push_back("-I" + d);
  Generated gen = generate(names, sources, search_dirs);
  if (const char* extra = getenv_nonempty("METALSIM_CXXFLAGS")) {
    std::istringstream ss(extra);
    std::string t;
    while (ss >> t)
      flags.push_back(t);
  }

  Hasher h;
  h.add(kGeneratorVersion);
  h.add(cxx);
  for (auto& f : flags)
    h.add(f);
  for (const std::string& hdr : list_dir(rt))
    h.add(read_file(rt + "/" + hdr));
  h.add(read_file(include_dir() + "/metalsim/abi.h"));
  std::set<std::string> seen;
  for (size_t i = 0; i < gen.tus.size(); ++i) {
    h.add(gen.tus[i]);
    std::vector<std::string> dirs = search_dirs;
    hash_includes(h, sources[i], dirs, seen, 0);
  }
  std::string key = h.hex();

  {
    std::lock_guard<std::mutex> lk(g_libs_mu);
    auto it = g_libs.find(key);
    if (it != g_libs.end())
      return it->second;
    auto failed = g_failed.find(key);
    if (failed != g_failed.end())
      throw CompileError(failed->second);
  }

  std::string dir = cache_dir();
  mkdirs(dir);
  std::string so = dir + "/" + key + ".so";
  // A library from the cache, unless it does not load: empty or cut short (a compile killed
  // half-way, a full disk) or built for another metalsim. Then it is deleted and compiled
  // again, instead of every dispatch failing on "invalid ELF header".
  std::shared_ptr<Library> lib;
  if (file_exists(so)) {
    try {
      lib = load(so);
    } catch (const Error&) {
      std::remove(so.c_str());
    }
  }
  if (!lib) {
    std::string tag = std::to_string(getpid()) + "." + std::to_string(std::rand());
    std::vector<std::string> argv = {cxx};
    argv.insert(argv.end(), flags.begin(), flags.end());
    for (size_t i = 0; i < gen.tus.size(); ++i) {
      std::string cpp = dir + "/" + key + "." + std::to_string(i) + ".cpp";
      std::string tmp = cpp + "." + tag;
      {
        std::ofstream f(tmp, std::ios::binary);
        f << gen.tus[i];
        if (!f)
          throw Error("metalsim: cannot write '" + tmp + "'");
      }
      std::rename(tmp.c_str(), cpp.c_str());
      argv.push_back(cpp);
    }
    std::string tmp_so = so + "." + tag;
    argv.push_back("-o");
    argv.push_back(tmp_so);
    argv.insert(argv.end(), link_libs.begin(), link_libs.end());
    std::string out;
    ++g_compiler_runs;
    int rc = run_command(argv, out);
    std::string recursion = find_recursion(tmp_so, rt);
    if (rc != 0 || !recursion.empty()) {
      std::remove(tmp_so.c_str());
      std::string what;
      for (size_t i = 0; i < names.size(); ++i)
        what += (i ? ", " : "") + names[i];
      std::string msg = "metalsim: compiling " + what + " failed (" + cxx + "):\n" +
                        (rc != 0 ? explain_diagnostics(out) : recursion);
      {
        std::lock_guard<std::mutex> lk(g_libs_mu);
        g_failed.emplace(key, msg);
      }
      throw CompileError(msg);
    }
    if (std::rename(tmp_so.c_str(), so.c_str()) != 0)
      throw Error("metalsim: cannot move the compiled library to '" + so + "'");
    lib = load(so);
  }

  lib->warnings_ = gen.warnings;
  std::lock_guard<std::mutex> lk(g_libs_mu);
  auto [it, inserted] = g_libs.emplace(key, lib);
  return it->second;
}

} // namespace metalsim
