// metalsim host library: .metal -> C++ code generation, compilation, caching, loading, dispatch.
#include "metalsim/host.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "metalsim/abi.h"

extern char** environ;

#ifndef METALSIM_DEFAULT_HOME
#define METALSIM_DEFAULT_HOME ""
#endif
#ifndef METALSIM_DEFAULT_CXX
#define METALSIM_DEFAULT_CXX "c++"
#endif

namespace metalsim {

// Bump when the generated code or the runtime's ABI changes (part of the cache key).
static const char* kGeneratorVersion = "metalsim-gen-5";

// ---------------------------------------------------------------- bindings

void Bindings::buffer(int index, void* data, uint64_t size, Dtype dtype) {
  if (index < 0 || index > 30)
    throw BindingError(
        "buffer index " + std::to_string(index) +
        " is out of range: Metal has [[buffer(0)]] to [[buffer(30)]]");
  Buffer b;
  b.data = data;
  b.size = size;
  b.dtype = dtype;
  buffers_[index] = b;
}

void Bindings::bytes(int index, const void* data, uint64_t size, Dtype dtype) {
  if (index < 0 || index > 30)
    throw BindingError(
        "buffer index " + std::to_string(index) +
        " is out of range: Metal has [[buffer(0)]] to [[buffer(30)]]");
  Buffer b;
  b.copy = std::make_shared<std::vector<unsigned char>>(size ? size : 1);
  if (size)
    std::memcpy(b.copy->data(), data, size);
  b.data = b.copy->data();
  b.size = size;
  b.dtype = dtype;
  b.is_bytes = true;
  buffers_[index] = b;
}

void Bindings::threadgroup(int index, uint64_t length) {
  if (index < 0 || index > 30)
    throw BindingError("threadgroup index " + std::to_string(index) + " is out of range: 0 to 30");
  threadgroup_[index] = length;
}

// ---------------------------------------------------------------- small utilities

namespace {

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

struct Hasher {
  uint64_t a = 1469598103934665603ull, b = 0x9e3779b97f4a7c15ull;
  void add(const std::string& s) {
    for (unsigned char c : s) {
      a = (a ^ c) * 1099511628211ull;
      b = (b ^ c) * 0x100000001b3ull + 0x7f4a7c15ull;
      b ^= b >> 29;
    }
    a = (a ^ 0xff) * 1099511628211ull; // separator
  }
  std::string hex() const {
    char buf[40];
    std::snprintf(buf, sizeof(buf), "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
    return buf;
  }
};

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

} // namespace

std::string runtime_dir() {
  if (const char* h = getenv_nonempty("METALSIM_HOME"))
    return std::string(h) + "/runtime";
  return std::string(METALSIM_DEFAULT_HOME) + "/runtime";
}

static std::string include_dir() {
  if (const char* h = getenv_nonempty("METALSIM_HOME"))
    return std::string(h) + "/include";
  return std::string(METALSIM_DEFAULT_HOME) + "/include";
}

std::string cache_dir() {
  if (const char* d = getenv_nonempty("METALSIM_CACHE_DIR"))
    return d;
  if (const char* d = getenv_nonempty("TINY_ATTN_CACHE"))
    return std::string(d) + "/metalsim";
  if (const char* d = getenv_nonempty("XDG_CACHE_HOME"))
    return std::string(d) + "/tiny-attn/metalsim";
  if (const char* h = getenv_nonempty("HOME"))
    return std::string(h) + "/.cache/tiny-attn/metalsim";
  return "/tmp/tiny-attn-metalsim";
}

std::string compiler() {
  if (const char* c = getenv_nonempty("METALSIM_CXX"))
    return c;
  if (const char* c = getenv_nonempty("CXX"))
    return c;
  return METALSIM_DEFAULT_CXX;
}

// ---------------------------------------------------------------- code generation

namespace {

struct SourceError {
  unsigned line;
  std::string msg;
};

bool is_ident_char(char c) {
  return std::isalnum((unsigned char)c) || c == '_';
}

// Comments, string/char literals and preprocessor lines become spaces (newlines kept), so the
// parser below only sees code; offsets stay those of the original text.
std::string mask_source(const std::string& s) {
  std::string m = s;
  size_t n = s.size(), i = 0;
  bool line_start = true;
  auto blank = [&](size_t a, size_t b) {
    for (size_t k = a; k < b && k < n; ++k)
      if (m[k] != '\n')
        m[k] = ' ';
  };
  while (i < n) {
    char c = s[i];
    if (line_start) {
      size_t j = i;
      while (j < n && (s[j] == ' ' || s[j] == '\t'))
        ++j;
      if (j < n && s[j] == '#') {
        size_t e = j;
        while (e < n && s[e] != '\n') {
          if (s[e] == '\\' && e + 1 < n && s[e + 1] == '\n')
            ++e;
          ++e;
        }
        blank(j, e);
        i = e;
        continue;
      }
      line_start = false;
    }
    if (c == '\n') {
      line_start = true;
      ++i;
    } else if (c == '/' && i + 1 < n && s[i + 1] == '/') {
      size_t e = s.find('\n', i);
      if (e == std::string::npos)
        e = n;
      blank(i, e);
      i = e;
    } else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
      size_t e = s.find("*/", i + 2);
      e = (e == std::string::npos) ? n : e + 2;
      blank(i, e);
      i = e;
    } else if (c == '"' || c == '\'') {
      size_t e = i + 1;
      while (e < n && s[e] != c && s[e] != '\n')
        e += (s[e] == '\\') ? 2 : 1;
      blank(i + 1, e);
      i = e + 1;
    } else {
      ++i;
    }
  }
  return m;
}

unsigned line_of(const std::string& s, size_t pos) {
  return 1 + unsigned(std::count(s.begin(), s.begin() + std::min(pos, s.size()), '\n'));
}

size_t skip_ws(const std::string& m, size_t i) {
  while (i < m.size() && std::isspace((unsigned char)m[i]))
    ++i;
  return i;
}

// Index of the bracket matching the one at `open` (same kind), or npos.
size_t match_bracket(const std::string& m, size_t open) {
  char o = m[open];
  char c = o == '(' ? ')' : o == '[' ? ']' : o == '{' ? '}' : '>';
  int depth = 0;
  for (size_t i = open; i < m.size(); ++i) {
    if (m[i] == o)
      ++depth;
    else if (m[i] == c && --depth == 0)
      return i;
  }
  return std::string::npos;
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace((unsigned char)s[a]))
    ++a;
  while (b > a && std::isspace((unsigned char)s[b - 1]))
    --b;
  return s.substr(a, b - a);
}

std::string collapse_ws(const std::string& s) {
  std::string r;
  bool sp = false;
  for (char c : s) {
    if (std::isspace((unsigned char)c)) {
      sp = true;
    } else {
      if (sp && !r.empty())
        r += ' ';
      sp = false;
      r += c;
    }
  }
  return r;
}

std::string c_string(const std::string& s) {
  std::string r = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\')
      r += '\\';
    if (c == '\n') {
      r += "\\n";
      continue;
    }
    r += c;
  }
  return r + "\"";
}

// Split at top-level commas (outside (), [], {}, <>).
std::vector<std::pair<size_t, size_t>> split_commas(const std::string& m, size_t a, size_t b) {
  std::vector<std::pair<size_t, size_t>> parts;
  int depth = 0;
  size_t start = a;
  for (size_t i = a; i < b; ++i) {
    char c = m[i];
    if (c == '(' || c == '[' || c == '{' || c == '<')
      ++depth;
    else if (c == ')' || c == ']' || c == '}' || c == '>')
      --depth;
    else if (c == ',' && depth == 0) {
      parts.push_back({start, i});
      start = i + 1;
    }
  }
  parts.push_back({start, b});
  return parts;
}

// s with the characters inside (), [] and {} replaced by spaces (the brackets stay).
std::string blank_nested(const std::string& s) {
  std::string r = s;
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == ')' || c == ']' || c == '}')
      --depth;
    if (depth > 0 && c != '\n')
      r[i] = ' ';
    if (c == '(' || c == '[' || c == '{')
      ++depth;
  }
  return r;
}

// The declarators of a declaration whose nested brackets are blanked (see blank_nested): split at
// the commas outside template arguments (`vec<float, 4> a[N], b[M]` has two).
std::vector<std::pair<size_t, size_t>> split_declarators(const std::string& top) {
  std::vector<std::pair<size_t, size_t>> parts;
  int angle = 0;
  size_t start = 0;
  for (size_t i = 0; i < top.size(); ++i) {
    if (top[i] == '<')
      ++angle;
    else if (top[i] == '>' && angle > 0)
      --angle;
    else if (top[i] == ',' && angle == 0) {
      parts.push_back({start, i});
      start = i + 1;
    }
  }
  parts.push_back({start, top.size()});
  return parts;
}

const char* kBuiltins[] = {
    "thread_position_in_grid",
    "thread_position_in_threadgroup",
    "threadgroup_position_in_grid",
    "thread_index_in_threadgroup",
    "threads_per_threadgroup",
    "threadgroups_per_grid",
    "threads_per_grid",
    "simdgroup_index_in_threadgroup",
    "thread_index_in_simdgroup",
    "threads_per_simdgroup",
    "simdgroups_per_threadgroup",
    "thread_execution_width",
    "dispatch_threads_per_threadgroup",
};

const char* kStdAttributes[] = {
    "maybe_unused",
    "likely",
    "unlikely",
    "nodiscard",
    "fallthrough",
    "noreturn",
    "deprecated",
    "gnu",
    "clang",
    "carries_dependency"};

struct Attr {
  size_t begin, end; // [[ ... ]] span
  std::string text;  // inside, trimmed
};

// All [[...]] attribute blocks of the masked text.
std::vector<Attr> find_attributes(const std::string& m) {
  std::vector<Attr> out;
  for (size_t i = 0; i + 1 < m.size(); ++i) {
    if (m[i] == '[' && m[i + 1] == '[') {
      size_t e = m.find("]]", i + 2);
      if (e == std::string::npos)
        break;
      out.push_back({i, e + 2, trim(m.substr(i + 2, e - i - 2))});
      i = e + 1;
    }
  }
  return out;
}

bool is_std_attribute(const std::string& text) {
  std::string first;
  for (char c : text) {
    if (!is_ident_char(c))
      break;
    first += c;
  }
  for (const char* s : kStdAttributes)
    if (first == s)
      return true;
  return false;
}

struct Param {
  std::string type; // e.g. "device const float*"
  std::string name;
  std::string kind; // "buffer", "threadgroup", "builtin"
  unsigned index = 0;
  std::string builtin;
  unsigned line = 0;
};

struct TgDeclGen {
  std::string name, type, dims;
  unsigned line;
};

struct Kernel {
  std::string name;
  unsigned line;
  std::vector<Param> params;
  std::vector<TgDeclGen> tg_decls;
  unsigned max_threads = 0;
};

// Turns `1.5h` (a half literal) into `half(1.5)`.
void rewrite_half_literals(const std::string& m, std::string& out_text) {
  std::string r;
  size_t n = m.size(), i = 0, last = 0;
  while (i < n) {
    char c = m[i];
    bool starts = (std::isdigit((unsigned char)c) ||
                   (c == '.' && i + 1 < n && std::isdigit((unsigned char)m[i + 1]))) &&
                  (i == 0 || (!is_ident_char(m[i - 1]) && m[i - 1] != '.'));
    if (!starts) {
      ++i;
      continue;
    }
    size_t j = i;
    if (c == '0' && j + 1 < n && (m[j + 1] == 'x' || m[j + 1] == 'X')) {
      j += 2;
      while (j < n && std::isxdigit((unsigned char)m[j]))
        ++j;
      i = j;
      continue;
    }
    while (j < n && (std::isdigit((unsigned char)m[j]) || m[j] == '.'))
      ++j;
    if (j < n && (m[j] == 'e' || m[j] == 'E')) {
      size_t k = j + 1;
      if (k < n && (m[k] == '+' || m[k] == '-'))
        ++k;
      if (k < n && std::isdigit((unsigned char)m[k])) {
        while (k < n && std::isdigit((unsigned char)m[k]))
          ++k;
        j = k;
      }
    }
    if (j < n && (m[j] == 'h' || m[j] == 'H') && (j + 1 >= n || !is_ident_char(m[j + 1]))) {
      r += out_text.substr(last, i - last);
      r += "half(" + out_text.substr(i, j - i) + ")";
      last = j + 1;
    }
    i = j;
  }
  r += out_text.substr(last);
  out_text = r;
}

// Replaces each `constant` of the masked text m by `const` (padded to the same length) in out,
// except inside [[...]], inside the spans `skip`, and where the neighbouring declaration
// specifiers already contain `const` or `constexpr` (`const constant int& n`,
// `constant constexpr uint A = 4;`): C++ rejects a second `const`.
void rewrite_constant_qualifiers(
    const std::string& m, const std::vector<std::pair<size_t, size_t>>& skip, std::string& out) {
  const std::string kw = "constant";
  std::vector<Attr> attrs = find_attributes(m);
  auto word_before = [&](size_t end, size_t& begin) { // the identifier ending at end, if any
    begin = end;
    while (begin > 0 && is_ident_char(m[begin - 1]))
      --begin;
    return m.substr(begin, end - begin);
  };
  for (size_t i = m.find(kw); i != std::string::npos; i = m.find(kw, i + kw.size())) {
    if ((i > 0 && is_ident_char(m[i - 1])) ||
        (i + kw.size() < m.size() && is_ident_char(m[i + kw.size()])))
      continue;
    bool skipped = false;
    for (auto& a : attrs)
      if (i >= a.begin && i < a.end)
        skipped = true;
    for (auto& [a, b] : skip)
      if (i >= a && i < b)
        skipped = true;
    if (skipped)
      continue;
    bool has_const = false;
    // Specifiers before it: identifiers separated by spaces, back to the previous punctuation.
    for (size_t e = i; e > 0;) {
      while (e > 0 && std::isspace((unsigned char)m[e - 1]))
        --e;
      size_t b;
      std::string w = word_before(e, b);
      if (w.empty())
        break;
      if (w == "const" || w == "constexpr")
        has_const = true;
      e = b;
    }
    // Specifiers after it, up to the declarator (`*`, `&`, a name followed by `=`, ...).
    for (size_t q = i + kw.size(); q < m.size();) {
      q = skip_ws(m, q);
      size_t b = q;
      while (q < m.size() && is_ident_char(m[q]))
        ++q;
      if (q == b)
        break;
      std::string w = m.substr(b, q - b);
      if (w == "const" || w == "constexpr")
        has_const = true;
    }
    if (!has_const)
      out.replace(i, kw.size(), "const   ");
  }
}

// Rewrites one .metal file and collects its kernels. Line numbers of the output equal the input's.
std::string
rewrite_file(const std::string& src, const std::string& file, std::vector<Kernel>& kernels) {
  const std::string m = mask_source(src);
  std::string out = src; // edits are applied with the same offsets (replacements keep length
                         // where possible; threadgroup declarations are rebuilt below)
  auto err = [&](size_t pos, const std::string& msg) { throw SourceError{line_of(src, pos), msg}; };

  // 1. Find kernels.
  std::vector<Attr> attrs = find_attributes(m);
  struct Edit {
    size_t begin, end;
    std::string text;
  };
  std::vector<Edit> edits;
  std::vector<std::pair<size_t, size_t>> kernel_spans; // body spans
  std::vector<std::pair<size_t, size_t>> param_spans;  // kernel parameter lists

  auto next_kernel = [&](size_t from, size_t& kw_begin, size_t& after) -> bool {
    // `kernel` keyword or [[kernel]] / [[kernel, ...]] attribute.
    for (size_t i = from; i < m.size(); ++i) {
      if (m.compare(i, 6, "kernel") == 0 && (i == 0 || !is_ident_char(m[i - 1])) &&
          (i + 6 >= m.size() || !is_ident_char(m[i + 6]))) {
        // inside [[ ]]?
        bool in_attr = false;
        for (auto& a : attrs)
          if (i > a.begin && i < a.end) {
            in_attr = true;
            kw_begin = a.begin;
            after = a.end;
          }
        if (!in_attr) {
          kw_begin = i;
          after = i + 6;
        }
        return true;
      }
    }
    return false;
  };

  size_t pos = 0, kb, ka;
  while (next_kernel(pos, kb, ka)) {
    size_t i = skip_ws(m, ka);
    // more attributes
    while (i + 1 < m.size() && m[i] == '[' && m[i + 1] == '[') {
      size_t e = m.find("]]", i);
      i = skip_ws(m, e + 2);
    }
    if (m.compare(i, 4, "void") != 0 || is_ident_char(m[i + 4])) {
      pos = ka;
      if (m.compare(kb, 2, "[[") == 0 || m.compare(i, 8, "template") == 0)
        err(kb, "a kernel must return void (templated kernels are not supported by metalsim)");
      continue;
    }
    i = skip_ws(m, i + 4);
    size_t nb = i;
    while (i < m.size() && is_ident_char(m[i]))
      ++i;
    Kernel k;
    k.name = m.substr(nb, i - nb);
    k.line = line_of(src, nb);
    i = skip_ws(m, i);
    if (k.name.empty() || i >= m.size() || m[i] != '(')
      err(nb, "cannot parse the kernel declaration");
    size_t close = match_bracket(m, i);
    if (close == std::string::npos)
      err(i, "unbalanced parentheses in the kernel's parameter list");
    param_spans.push_back({i + 1, close});
    // Parameters.
    std::set<unsigned> seen_buffers, seen_tg;
    for (auto [a, b] : split_commas(m, i + 1, close)) {
      std::string ptext = m.substr(a, b - a);
      if (trim(ptext).empty())
        continue;
      Param p;
      p.line = line_of(
          src,
          a + (ptext.size() - trim(ptext).size() > 0 ? ptext.find_first_not_of(" \t\n\r") : 0));
      // attributes of this parameter
      std::vector<std::string> pattrs;
      std::string stripped;
      for (size_t q = 0; q < ptext.size();) {
        if (ptext.compare(q, 2, "[[") == 0) {
          size_t e = ptext.find("]]", q);
          pattrs.push_back(trim(ptext.substr(q + 2, e - q - 2)));
          q = e + 2;
          stripped += ' ';
        } else {
          stripped += ptext[q++];
        }
      }
      stripped = trim(stripped);
      size_t e = stripped.size();
      while (e > 0 && !is_ident_char(stripped[e - 1]))
        --e;
      size_t s0 = e;
      while (s0 > 0 && is_ident_char(stripped[s0 - 1]))
        --s0;
      p.name = stripped.substr(s0, e - s0);
      p.type = collapse_ws(trim(stripped.substr(0, s0)));
      if (p.name.empty() || p.type.empty())
        err(a,
            "kernel '" + k.name + "': cannot parse the parameter '" + collapse_ws(trim(ptext)) +
                "'");
      if (pattrs.empty())
        err(a,
            "kernel '" + k.name + "': parameter '" + p.name +
                "' needs an attribute: [[buffer(n)]], [[threadgroup(n)]] or a builtin such as "
                "[[thread_position_in_grid]]");
      for (const std::string& at : pattrs) {
        std::string at2 = collapse_ws(at);
        unsigned idx = 0;
        char tail = 0;
        if (std::sscanf(at2.c_str(), "buffer ( %u %c", &idx, &tail) == 2 ||
            std::sscanf(at2.c_str(), "buffer(%u%c", &idx, &tail) == 2) {
          if (idx > 30)
            err(a,
                "kernel '" + k.name + "': [[buffer(" + std::to_string(idx) +
                    ")]] is out of range (0..30)");
          if (!seen_buffers.insert(idx).second)
            err(a,
                "kernel '" + k.name + "': two parameters use [[buffer(" + std::to_string(idx) +
                    ")]]");
          p.kind = "buffer";
          p.index = idx;
        } else if (
            std::sscanf(at2.c_str(), "threadgroup ( %u %c", &idx, &tail) == 2 ||
            std::sscanf(at2.c_str(), "threadgroup(%u%c", &idx, &tail) == 2) {
          if (idx > 30)
            err(a,
                "kernel '" + k.name + "': [[threadgroup(" + std::to_string(idx) +
                    ")]] is out of range (0..30)");
          if (!seen_tg.insert(idx).second)
            err(a,
                "kernel '" + k.name + "': two parameters use [[threadgroup(" + std::to_string(idx) +
                    ")]]");
          if (p.type.find('*') == std::string::npos)
            err(a,
                "kernel '" + k.name + "': [[threadgroup(" + std::to_string(idx) +
                    ")]] parameter '" + p.name + "' must be a pointer");
          p.kind = "threadgroup";
          p.index = idx;
        } else {
          bool found = false;
          for (const char* bname : kBuiltins)
            if (at2 == bname)
              found = true;
          if (!found)
            err(a,
                "kernel '" + k.name + "': parameter '" + p.name + "' has the attribute [[" + at2 +
                    "]], which metalsim does not support (buffers, threadgroup memory and the "
                    "compute builtins only)");
          p.kind = "builtin";
          p.builtin = at2;
        }
      }
      k.params.push_back(p);
    }
    // Body.
    size_t j = skip_ws(m, close + 1);
    while (j + 1 < m.size() && m[j] == '[' && m[j + 1] == '[')
      j = skip_ws(m, m.find("]]", j) + 2);
    if (j >= m.size() || m[j] != '{')
      err(close, "kernel '" + k.name + "': expected the body '{' after the parameters");
    size_t body_end = match_bracket(m, j);
    if (body_end == std::string::npos)
      err(j, "kernel '" + k.name + "': unbalanced braces in the body");
    // [[max_total_threads_per_threadgroup(n)]] on this declaration
    for (auto& at : attrs) {
      const char* key = "max_total_threads_per_threadgroup";
      size_t q = at.text.find(key);
      unsigned mt = 0;
      if (at.begin >= pos && at.end <= j && q != std::string::npos &&
          std::sscanf(at.text.c_str() + q + std::strlen(key), " ( %u", &mt) == 1)
        k.max_threads = mt;
    }
    // Threadgroup declarations in the body.
    for (size_t q = j + 1; q < body_end; ++q) {
      if (m.compare(q, 11, "threadgroup") != 0 || is_ident_char(m[q - 1]) ||
          is_ident_char(m[q + 11]))
        continue;
      size_t pb = q;
      while (pb > j && std::isspace((unsigned char)m[pb - 1]))
        --pb;
      char prev = m[pb - 1];
      if (!(prev == ';' || prev == '{' || prev == '}'))
        continue;
      // statement end
      size_t semi = q;
      int depth = 0;
      for (; semi < body_end; ++semi) {
        char c = m[semi];
        if (c == '(' || c == '[' || c == '{')
          ++depth;
        else if (c == ')' || c == ']' || c == '}')
          --depth;
        else if (c == ';' && depth == 0)
          break;
      }
      std::string decl = m.substr(q + 11, semi - q - 11);
      // `top` is decl with the insides of (), [] and {} blanked: a `*` or `=` in an array size
      // (`threadgroup float t[A * B];`) is not a pointer declarator or an initializer.
      const std::string top = blank_nested(decl);
      if (top.find('(') != std::string::npos)
        continue; // e.g. a pointer to an array: not storage
      auto parts = split_declarators(top);
      size_t n_pointers = 0;
      for (auto [pa, pb] : parts) {
        std::string t = top.substr(pa, pb - pa);
        t = t.substr(0, t.find('=')); // the declarator, not its initializer
        if (t.find('*') != std::string::npos || t.find('&') != std::string::npos)
          ++n_pointers;
      }
      if (n_pointers == parts.size())
        continue; // pointers/references to threadgroup memory
      if (n_pointers != 0)
        err(q,
            "kernel '" + k.name +
                "': this statement declares threadgroup arrays and pointers "
                "together: declare the pointers in a statement of their own");
      if (top.find('=') != std::string::npos)
        err(q,
            "kernel '" + k.name +
                "': a threadgroup variable cannot have an initializer "
                "(threadgroup memory starts uninitialized; assign it, then threadgroup_barrier)");
      std::string type;
      std::string repl;
      size_t nl = std::count(src.begin() + q, src.begin() + semi, '\n');
      for (size_t pi = 0; pi < parts.size(); ++pi) {
        auto [pa, pb] = parts[pi];
        size_t br = top.find('[', pa);
        if (br >= pb)
          br = std::string::npos;
        std::string head = trim(decl.substr(pa, (br == std::string::npos ? pb : br) - pa));
        std::string dims =
            br == std::string::npos ? "" : collapse_ws(trim(decl.substr(br, pb - br)));
        if (!dims.empty() && dims.back() != ']')
          err(q, "kernel '" + k.name + "': cannot parse the threadgroup declaration");
        size_t ns = head.size();
        while (ns > 0 && is_ident_char(head[ns - 1]))
          --ns;
        std::string name = head.substr(ns);
        std::string before = collapse_ws(trim(head.substr(0, ns)));
        if (pi == 0)
          type = before;
        else if (!before.empty())
          err(q, "kernel '" + k.name + "': cannot parse the threadgroup declaration");
        if (name.empty() || type.empty() || std::isdigit((unsigned char)name[0]))
          err(q, "kernel '" + k.name + "': cannot parse the threadgroup declaration");
        unsigned idx = unsigned(k.tg_decls.size());
        k.tg_decls.push_back({name, type, dims, line_of(src, q)});
        if (dims.empty())
          repl += type + "& " + name + " = *::metalsim::rt::tg_decl<" + type + ">(" +
                  std::to_string(idx) + ");";
        else
          repl += type + " (&" + name + ")" + dims + " = *::metalsim::rt::tg_decl<" + type + dims +
                  ">(" + std::to_string(idx) + ");";
      }
      repl += std::string(nl, '\n');
      edits.push_back({q, semi + 1, repl});
      q = semi;
    }
    kernel_spans.push_back({kb, body_end});
    kernels.push_back(k);
    pos = body_end + 1;
  }

  // 2. The `constant` address space is read-only: outside the kernels' parameter lists (whose
  // buffers are bound as they are), `constant` becomes `const`, so a program-scope
  // `constant uint N = 4;` is a constant that can size an array, as it is in Metal. Where the
  // declaration already says `const` or `constexpr`, the prelude's macro removes the word.
  rewrite_constant_qualifiers(m, param_spans, out);
  // 3. Metal attributes disappear (C++ would reject [[threadgroup(0)]] once `threadgroup` is a
  // macro); standard C++ attributes stay. Blank with spaces: offsets and lines do not move.
  for (auto& a : attrs) {
    if (is_std_attribute(a.text))
      continue;
    bool inside_edit = false;
    for (auto& e : edits)
      if (a.begin >= e.begin && a.begin < e.end)
        inside_edit = true;
    if (!inside_edit)
      for (size_t k2 = a.begin; k2 < a.end; ++k2)
        if (out[k2] != '\n')
          out[k2] = ' ';
  }
  // 4. Apply the threadgroup edits from the back.
  std::sort(
      edits.begin(), edits.end(), [](const Edit& x, const Edit& y) { return x.begin > y.begin; });
  for (auto& e : edits)
    out.replace(e.begin, e.end - e.begin, e.text);
  // 5. Half literals (1.0h).
  rewrite_half_literals(mask_source(out), out);
  (void)file;
  return out;
}

std::string builtin_enum(const std::string& b) {
  return "::metalsim::rt::Builtin::" + b;
}

// The trampoline, the binding checker and the table entry of one kernel.
std::string generate_kernel_glue(const Kernel& k, const std::string& file) {
  std::ostringstream o;
  std::string ns = "metalsim_k_" + k.name;
  o << "#line " << k.line << " " << c_string(file) << "\n";
  o << "namespace " << ns << " {\n";
  for (size_t i = 0; i < k.params.size(); ++i)
    o << "using P" << i << " = " << k.params[i].type << ";\n";
  o << "static void thread_fn(::metalsim::rt::Fiber& f) {\n  (void)f;\n  ::" << k.name << "(";
  for (size_t i = 0; i < k.params.size(); ++i) {
    const Param& p = k.params[i];
    if (i)
      o << ", ";
    if (p.kind == "buffer")
      o << "::metalsim::rt::bind_buffer<P" << i << ">(f, " << p.index << ")";
    else if (p.kind == "threadgroup")
      o << "::metalsim::rt::bind_threadgroup<P" << i << ">(f, " << p.index << ")";
    else
      o << "::metalsim::rt::builtin<P" << i << ">(f, " << builtin_enum(p.builtin) << ")";
  }
  o << ");\n}\n";
  o << "static void check(const ::metalsim::rt::Dispatch& d, ::metalsim::rt::Errors& e) {\n  "
       "(void)d; (void)e;\n";
  for (size_t i = 0; i < k.params.size(); ++i) {
    const Param& p = k.params[i];
    if (p.kind == "buffer")
      o << "  ::metalsim::rt::check_buffer<P" << i << ">(d, e, " << p.index << ", "
        << c_string(p.name) << ", " << c_string(p.type) << ");\n";
    else if (p.kind == "threadgroup")
      o << "  ::metalsim::rt::check_threadgroup<P" << i << ">(d, e, " << p.index << ", "
        << c_string(p.name) << ", " << c_string(p.type) << ");\n";
  }
  o << "}\n";
  o << "static const ::metalsim::rt::TgDecl tg_decls[] = {\n";
  for (auto& t : k.tg_decls) // #line: an unknown size constant is reported at the declaration
    o << "#line " << t.line << " " << c_string(file) << "\n  {" << c_string(t.name) << ", sizeof("
      << t.type << t.dims << "), alignof(" << t.type << t.dims << "), " << t.line << "},\n";
  o << "#line " << k.line << " " << c_string(file) << "\n  {nullptr, 0, 0, 0}};\n";
  o << "static const ::metalsim::rt::KernelInfo info = {" << c_string(k.name) << ", "
    << c_string(file) << ", " << k.line << ", &thread_fn, &check, tg_decls, " << k.tg_decls.size()
    << ", " << k.max_threads << "};\n";
  o << "}  // namespace " << ns << "\n";
  return o.str();
}

struct Generated {
  std::vector<std::string> tus; // translation units
  std::vector<std::string> kernel_names;
};

Generated
generate(const std::vector<std::string>& display_names, const std::vector<std::string>& sources) {
  Generated g;
  std::set<std::string> names;
  size_t nfiles = sources.size();
  for (size_t fi = 0; fi < nfiles; ++fi) {
    const std::string& file = display_names[fi];
    std::vector<Kernel> kernels;
    std::string body;
    try {
      body = rewrite_file(sources[fi], file, kernels);
    } catch (const SourceError& e) {
      throw CompileError(file + ":" + std::to_string(e.line) + ": error: " + e.msg);
    }
    for (auto& k : kernels) {
      if (!names.insert(k.name).second)
        throw CompileError(
            file + ":" + std::to_string(k.line) + ": error: a kernel named '" + k.name +
            "' is defined twice in this library");
      g.kernel_names.push_back(k.name);
    }
    std::ostringstream tu;
    tu << "// Generated by metalsim from " << file << ". Do not edit.\n";
    tu << "#include \"metalsim_kernel_prelude.h\"\n";
    tu << "#line 1 " << c_string(file) << "\n";
    tu << body << "\n";
    for (auto& k : kernels)
      tu << generate_kernel_glue(k, file);
    tu << "const ::metalsim::rt::KernelInfo* const* metalsim_file_kernels_" << fi
       << "(size_t* n) {\n";
    tu << "  static const ::metalsim::rt::KernelInfo* const table[] = {";
    for (auto& k : kernels)
      tu << "&metalsim_k_" << k.name << "::info, ";
    tu << "nullptr};\n  *n = " << kernels.size() << ";\n  return table;\n}\n";
    if (fi + 1 == nfiles) {
      // The library's entry points (in the last translation unit).
      for (size_t j = 0; j + 1 < nfiles; ++j)
        tu << "const ::metalsim::rt::KernelInfo* const* metalsim_file_kernels_" << j
           << "(size_t* n);\n";
      tu << "METALSIM_DEFINE_CONTEXT_SWITCH\n";
      tu << "static std::vector<const ::metalsim::rt::KernelInfo*>& metalsim_all_kernels() {\n"
            "  static std::vector<const ::metalsim::rt::KernelInfo*> all = [] {\n"
            "    std::vector<const ::metalsim::rt::KernelInfo*> v;\n"
            "    size_t n;\n";
      for (size_t j = 0; j < nfiles; ++j)
        tu << "    { auto t = metalsim_file_kernels_" << j
           << "(&n); v.insert(v.end(), t, t + n); }\n";
      tu << "    return v;\n  }();\n  return all;\n}\n";
      tu << "extern \"C\" __attribute__((visibility(\"default\"))) int metalsim_dispatch("
            "const metalsim_dispatch_args* a, char* err, size_t errlen) {\n"
            "  auto& ks = metalsim_all_kernels();\n"
            "  return ::metalsim::rt::run_dispatch(ks.data(), ks.size(), a, err, errlen);\n}\n";
      tu << "extern \"C\" __attribute__((visibility(\"default\"))) const char* "
            "metalsim_kernel_names() {\n"
            "  static std::string s = [] { std::string r; for (auto k : metalsim_all_kernels()) { "
            "r += k->name; r += '\\n'; } return r; }();\n"
            "  return s.c_str();\n}\n";
      tu << "extern \"C\" __attribute__((visibility(\"default\"))) int metalsim_abi_version() { "
            "return METALSIM_ABI_VERSION; }\n";
    }
    g.tus.push_back(tu.str());
  }
  return g;
}

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

bool Library::has_kernel(const std::string& name) const {
  return std::find(kernel_names_.begin(), kernel_names_.end(), name) != kernel_names_.end();
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
  Generated gen = generate(names, sources);
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
      "-w",
      "-I" + rt,
      "-I" + include_dir()};
#if !defined(__APPLE__)
  // Stack probes: a frame larger than the space left on a fiber's stack touches the guard
  // under it (and faults, reported as a stack overflow) instead of jumping over it into another
  // thread's stack. (Apple's compilers probe large frames by default.)
  flags.push_back("-fstack-clash-protection");
#endif
  std::vector<std::string> search_dirs;
  for (auto& n : names)
    if (!n.empty() && n[0] == '/')
      search_dirs.push_back(dirname_of(n));
  for (auto& d : include_dirs)
    search_dirs.push_back(absolute(d));
  for (auto& d : search_dirs)
    flags.push_back("-I" + d);
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
  for (const char* hdr :
       {"metal_stdlib", "metalsim_rt.h", "metalsim_types.h", "metalsim_kernel_prelude.h"})
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
  if (!file_exists(so)) {
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
    std::string out;
    ++g_compiler_runs;
    int rc = run_command(argv, out);
    if (rc != 0) {
      std::remove(tmp_so.c_str());
      std::string what;
      for (size_t i = 0; i < names.size(); ++i)
        what += (i ? ", " : "") + names[i];
      std::string msg = "metalsim: compiling " + what + " failed (" + cxx + "):\n" + out;
      {
        std::lock_guard<std::mutex> lk(g_libs_mu);
        g_failed.emplace(key, msg);
      }
      throw CompileError(msg);
    }
    if (std::rename(tmp_so.c_str(), so.c_str()) != 0)
      throw Error("metalsim: cannot move the compiled library to '" + so + "'");
  }

  void* handle = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle)
    throw Error(std::string("metalsim: cannot load '") + so + "': " + dlerror());
  auto abi = reinterpret_cast<metalsim_abi_version_fn>(dlsym(handle, "metalsim_abi_version"));
  auto names_fn =
      reinterpret_cast<metalsim_kernel_names_fn>(dlsym(handle, "metalsim_kernel_names"));
  void* disp = dlsym(handle, "metalsim_dispatch");
  if (!abi || !names_fn || !disp || abi() != METALSIM_ABI_VERSION)
    throw Error(
        "metalsim: '" + so + "' is not a kernel library of this metalsim version (delete it)");
  std::shared_ptr<Library> lib(new Library());
  lib->so_path_ = so;
  lib->handle_ = handle;
  lib->dispatch_fn_ = disp;
  std::istringstream ss(names_fn());
  std::string line;
  while (std::getline(ss, line))
    if (!line.empty())
      lib->kernel_names_.push_back(line);
  std::lock_guard<std::mutex> lk(g_libs_mu);
  auto [it, inserted] = g_libs.emplace(key, lib);
  return it->second;
}

namespace {

// Metal buffers are always well aligned, and kernels rely on it (a `device const float4*` load
// is a 16-byte aligned load). Host memory need not be: MLX's CPU allocator returns addresses at
// 8 mod 16, and a NumPy view can start anywhere. Bound arrays whose memory starts misaligned
// are run on an aligned copy, written back after the dispatch wherever the kernel changed it.
// Bindings that overlap (the same array bound twice, an output sharing its input's buffer)
// share one copy, so they still alias as they do in memory.
class AlignedCopies {
 public:
  static constexpr uintptr_t kAlign = 16; // the largest vector type (float4, int4)

  explicit AlignedCopies(std::vector<metalsim_binding>& bufs) {
    std::vector<size_t> order;
    for (size_t i = 0; i < bufs.size(); ++i)
      if (bufs[i].data && bufs[i].size > 0 && !bufs[i].is_bytes)
        order.push_back(i);
    auto lo = [&](size_t i) { return reinterpret_cast<uintptr_t>(bufs[i].data); };
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return lo(x) < lo(y); });
    for (size_t k = 0; k < order.size();) {
      uintptr_t begin = lo(order[k]), end = begin + bufs[order[k]].size;
      size_t k2 = k + 1;
      while (k2 < order.size() && lo(order[k2]) < end) {
        end = std::max<uintptr_t>(end, lo(order[k2]) + bufs[order[k2]].size);
        ++k2;
      }
      if (begin % kAlign != 0) {
        Region r;
        r.host = reinterpret_cast<unsigned char*>(begin);
        r.size = end - begin;
        r.storage.reset(new unsigned char[r.size + 64]);
        uintptr_t p = reinterpret_cast<uintptr_t>(r.storage.get());
        r.copy = reinterpret_cast<unsigned char*>((p + 63) & ~uintptr_t(63));
        std::memcpy(r.copy, r.host, r.size);
        for (size_t j = k; j < k2; ++j)
          bufs[order[j]].data = r.copy + (lo(order[j]) - begin);
        regions_.push_back(std::move(r));
      }
      k = k2;
    }
  }
  // Writes what the kernel changed back to the caller's memory (compare first: an input may
  // live in memory that must not be written, and unchanged bytes need no write).
  void copy_back() {
    for (auto& r : regions_)
      if (std::memcmp(r.host, r.copy, r.size) != 0)
        std::memcpy(r.host, r.copy, r.size);
    regions_.clear();
  }

 private:
  struct Region {
    unsigned char* host = nullptr;
    unsigned char* copy = nullptr;
    size_t size = 0;
    std::unique_ptr<unsigned char[]> storage;
  };
  std::vector<Region> regions_;
};

} // namespace

void Library::dispatch(
    const std::string& kernel,
    Size3 grid,
    Size3 group,
    const Bindings& bindings,
    bool grid_is_threads,
    int workers) const {
  std::vector<metalsim_binding> bufs;
  for (auto& [idx, b] : bindings.buffers()) {
    if (size_t(idx) >= bufs.size())
      bufs.resize(size_t(idx) + 1, metalsim_binding{nullptr, 0, 0, 0});
    bufs[size_t(idx)] = metalsim_binding{b.data, b.size, int32_t(b.dtype), b.is_bytes ? 1 : 0};
    // A zero-length array still counts as bound.
    if (!bufs[size_t(idx)].data)
      bufs[size_t(idx)].data = const_cast<char*>("");
  }
  AlignedCopies aligned(bufs);
  std::vector<uint64_t> tg;
  for (auto& [idx, len] : bindings.threadgroup_lengths()) {
    if (size_t(idx) >= tg.size())
      tg.resize(size_t(idx) + 1, 0);
    tg[size_t(idx)] = len;
  }
  metalsim_dispatch_args a{};
  a.abi_version = METALSIM_ABI_VERSION;
  a.kernel = kernel.c_str();
  a.grid[0] = grid.x;
  a.grid[1] = grid.y;
  a.grid[2] = grid.z;
  a.group[0] = group.x;
  a.group[1] = group.y;
  a.group[2] = group.z;
  a.grid_is_threads = grid_is_threads ? 1 : 0;
  a.n_buffers = uint32_t(bufs.size());
  a.buffers = bufs.data();
  a.n_threadgroup = uint32_t(tg.size());
  a.threadgroup_lengths = tg.data();
  a.n_workers = workers;
  std::vector<char> err(8192, 0);
  int rc = reinterpret_cast<metalsim_dispatch_fn>(dispatch_fn_)(&a, err.data(), err.size());
  aligned.copy_back();
  std::string msg = err.data();
  switch (rc) {
  case METALSIM_OK:
    return;
  case METALSIM_ERR_KERNEL_NOT_FOUND:
    throw KernelNotFoundError(msg);
  case METALSIM_ERR_BINDING:
    throw BindingError(msg);
  case METALSIM_ERR_LIMIT:
    throw LimitError(msg);
  case METALSIM_ERR_DEADLOCK:
    throw DeadlockError(msg);
  default:
    throw DispatchError(msg);
  }
}

} // namespace metalsim
