// Small utilities shared by the pipeline's stages: files, hashing, running the compiler, where
// things live.
#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "internal.h"

extern char** environ;

#ifndef METALSIM_DEFAULT_HOME
#define METALSIM_DEFAULT_HOME ""
#endif
#ifndef METALSIM_DEFAULT_CXX
#define METALSIM_DEFAULT_CXX "c++"
#endif

namespace metalsim {
namespace detail {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f)
    throw Error("metalsim: cannot read '" + path + "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string dirname_of(const std::string& p) {
  auto i = p.find_last_of('/');
  if (i == std::string::npos)
    return ".";
  if (i == 0)
    return "/";
  return p.substr(0, i);
}

std::string absolute(const std::string& p) {
  if (!p.empty() && p[0] == '/')
    return p;
  char buf[4096];
  if (!getcwd(buf, sizeof(buf)))
    return p;
  return std::string(buf) + "/" + p;
}

void mkdirs(const std::string& path) {
  std::string cur;
  std::stringstream ss(path);
  std::string part;
  if (!path.empty() && path[0] == '/')
    cur = "/";
  while (std::getline(ss, part, '/')) {
    if (part.empty())
      continue;
    cur += part + "/";
    ::mkdir(cur.c_str(), 0755);
  }
}

const char* getenv_nonempty(const char* name) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : nullptr;
}

// Runs argv, returns exit status, stdout+stderr in `out`.
int run_command(const std::vector<std::string>& argv, std::string& out) {
  int fds[2];
  if (pipe(fds) != 0)
    throw Error("metalsim: pipe() failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<char*> args;
  for (auto& s : argv)
    args.push_back(const_cast<char*>(s.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    out = "cannot run '" + argv[0] + "': " + std::strerror(rc);
    return -1;
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0)
      out.append(buf, size_t(n));
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.')
        names.push_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string include_dir() {
  if (const char* h = getenv_nonempty("METALSIM_HOME"))
    return std::string(h) + "/include";
  return std::string(METALSIM_DEFAULT_HOME) + "/include";
}

} // namespace detail

using detail::getenv_nonempty;

std::string runtime_dir() {
  if (const char* h = getenv_nonempty("METALSIM_HOME"))
    return std::string(h) + "/runtime";
  return std::string(METALSIM_DEFAULT_HOME) + "/runtime";
}

std::string cache_dir() {
  if (const char* d = getenv_nonempty("METALSIM_CACHE_DIR"))
    return d;
  if (const char* d = getenv_nonempty("XDG_CACHE_HOME"))
    return std::string(d) + "/metalsim";
  if (const char* h = getenv_nonempty("HOME"))
    return std::string(h) + "/.cache/metalsim";
  return "/tmp/metalsim-cache";
}

std::string compiler() {
  if (const char* c = getenv_nonempty("METALSIM_CXX"))
    return c;
  if (const char* c = getenv_nonempty("CXX"))
    return c;
  return METALSIM_DEFAULT_CXX;
}

} // namespace metalsim
