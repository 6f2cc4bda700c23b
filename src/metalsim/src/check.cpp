// The strict-MSL rules: what Apple's Metal compiler refuses is refused here, at the .metal line,
// with what MSL offers instead. Three kinds:
//   * source rules (check_source), run by the translate stage on the kernel source;
//   * words the kernel prelude poisons (double, std::, new, throw, virtual, ...) and
//     variable-length arrays, reported by the compiler and explained by explain_diagnostics;
//   * recursion, found in the compiler's call graph (find_recursion).
#include "check.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "internal.h"

namespace metalsim {
namespace detail {

namespace {

bool is_address_space(const std::string& w) {
  return w == "device" || w == "constant" || w == "threadgroup" || w == "thread";
}

// The first identifier of an expression (`&tile[0]`, `(tile + 4)`, `tile`: tile).
std::string leading_identifier(const std::string& e) {
  size_t i = 0;
  while (i < e.size() && (std::isspace((unsigned char)e[i]) || e[i] == '&' || e[i] == '('))
    ++i;
  size_t b = i;
  while (i < e.size() && is_ident_char(e[i]))
    ++i;
  return e.substr(b, i - b);
}

// The name a declaration statement declares (`device float* p = x`: p; `float t[4]`: t).
std::string declared_name(const std::string& top) {
  size_t e = top.find('=');
  if (e == std::string::npos)
    e = top.size();
  size_t br = top.find('[');
  if (br < e)
    e = br;
  while (e > 0 && !is_ident_char(top[e - 1]))
    --e;
  size_t b = e;
  while (b > 0 && is_ident_char(top[b - 1]))
    --b;
  return top.substr(b, e - b);
}

bool is_constant_declaration(const std::string& top) {
  return has_word(top, "constant") || has_word(top, "const") || has_word(top, "constexpr");
}

// A function declaration rather than a variable: a `(` before any `=`.
bool declares_function(const std::string& top) {
  size_t p = top.find('('), e = top.find('=');
  return has_word(top, "operator") || (p != std::string::npos && (e == std::string::npos || p < e));
}

} // namespace

void check_source(
    const std::string& src,
    const std::string& m,
    const std::string& file,
    const std::vector<KernelSource>& kernels,
    std::vector<std::string>& warnings) {
  auto err = [&](size_t pos, const std::string& msg) {
    throw SourceError{locate(src, pos, file), msg};
  };

  // A kernel's buffers live in device or constant memory, and say which.
  for (auto& k : kernels)
    for (auto& p : k.params) {
      bool indirect =
          p.type.find('*') != std::string::npos || p.type.find('&') != std::string::npos;
      if (p.kind != "buffer" || !indirect)
        continue;
      if (has_word(p.type, "thread") || has_word(p.type, "threadgroup"))
        err(p.pos,
            "kernel '" + k.name + "': [[buffer(n)]] parameter '" + p.name + "' (" + p.type +
                ") must point to `device` or `constant` memory: buffers live there");
      if (!has_word(p.type, "device") && !has_word(p.type, "constant"))
        err(p.pos,
            "kernel '" + k.name + "': parameter '" + p.name + "' (" + p.type +
                ") is a pointer with no address space: MSL needs one, e.g. `device float* " +
                p.name + "` (read-write) or `constant float* " + p.name + "` (read-only)");
    }

  // Function pointers.
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i] != '(')
      continue;
    size_t q = skip_ws(m, i + 1);
    if (q >= m.size() || m[q] != '*')
      continue;
    q = skip_ws(m, q + 1);
    size_t b = q;
    while (q < m.size() && is_ident_char(m[q]))
      ++q;
    if (q == b)
      continue;
    size_t c = skip_ws(m, q);
    if (c < m.size() && m[c] == ')' && skip_ws(m, c + 1) < m.size() && m[skip_ws(m, c + 1)] == '(')
      err(i,
          "MSL has no function pointers ('" + m.substr(b, q - b) +
              "'): pass the choice as a template parameter or a function constant, and branch "
              "on it");
  }

  // printf: a simulator-only aid.
  std::set<unsigned> printf_lines;
  for (size_t i = m.find("printf"); i != std::string::npos; i = m.find("printf", i + 6)) {
    if ((i > 0 && is_ident_char(m[i - 1])) || is_ident_char(m[i + 6]))
      continue;
    if (skip_ws(m, i + 6) >= m.size() || m[skip_ws(m, i + 6)] != '(')
      continue;
    Location loc = locate(src, i, file);
    if (printf_lines.insert(loc.line).second)
      warnings.push_back(
          loc.file + ":" + std::to_string(loc.line) +
          ": warning: printf is a metalsim aid: Apple's Metal compiler refuses it. Remove it, "
          "or log with os_log_default.log(...) (#include <metal_logging>, macOS 15)");
  }

  // Statements by scope: program scope (N), class bodies (C), function bodies (F); braces of
  // initializers (I) belong to their statement.
  auto kernel_at = [&](size_t pos) -> const KernelSource* {
    for (auto& k : kernels)
      if (pos > k.body_begin && pos < k.body_end)
        return &k;
    return nullptr;
  };
  std::map<const KernelSource*, std::set<std::string>> tg_names, device_names;
  for (auto& k : kernels) {
    for (auto& n : k.threadgroup_arrays)
      tg_names[&k].insert(n);
    for (auto& p : k.params) {
      if (p.kind == "threadgroup")
        tg_names[&k].insert(p.name);
      else if (p.kind == "buffer" && has_word(p.type, "device"))
        device_names[&k].insert(p.name);
    }
  }
  // The address spaces of the pointer parameters of the functions defined so far, by name (one
  // entry per overload), to check what a kernel passes them.
  struct PointerParam {
    std::string space; // device, constant, threadgroup, thread or ""
    bool pointer;
  };
  std::map<std::string, std::vector<std::vector<PointerParam>>> helpers;
  auto record_function = [&](const std::string& head) {
    size_t close = head.rfind(')');
    if (close == std::string::npos)
      return;
    int depth = 0;
    size_t open = std::string::npos;
    for (size_t q = close + 1; q-- > 0;) {
      if (head[q] == ')')
        ++depth;
      else if (head[q] == '(' && --depth == 0) {
        open = q;
        break;
      }
    }
    if (open == std::string::npos)
      return;
    size_t ne = open;
    while (ne > 0 && std::isspace((unsigned char)head[ne - 1]))
      --ne;
    size_t nb = ne;
    while (nb > 0 && is_ident_char(head[nb - 1]))
      --nb;
    std::string name = head.substr(nb, ne - nb);
    if (name.empty())
      return;
    std::vector<PointerParam> params;
    for (auto [a, b] : split_commas(head, open + 1, close)) {
      std::string p = head.substr(a, b - a);
      PointerParam pp{"", p.find('*') != std::string::npos};
      for (const char* w : {"device", "constant", "threadgroup", "thread"})
        if (has_word(p, w))
          pp.space = w;
      params.push_back(pp);
    }
    helpers[name].push_back(params);
  };
  // A kernel passing threadgroup memory where a helper takes a device pointer (or the reverse).
  auto check_calls = [&](const KernelSource& k, size_t at, const std::string& text) {
    auto& tg = tg_names[&k];
    auto& dev = device_names[&k];
    for (auto& [name, overloads] : helpers) {
      for (size_t c = text.find(name); c != std::string::npos; c = text.find(name, c + 1)) {
        if ((c > 0 && is_ident_char(text[c - 1])) || is_ident_char(text[c + name.size()]))
          continue;
        size_t open = skip_ws(text, c + name.size());
        if (open >= text.size() || text[open] != '(')
          continue;
        size_t close = match_bracket(text, open);
        if (close == std::string::npos)
          continue;
        auto args = split_commas(text, open + 1, close);
        for (size_t j = 0; j < args.size(); ++j) {
          std::string arg = trim(text.substr(args[j].first, args[j].second - args[j].first));
          std::string id = leading_identifier(arg);
          size_t after = skip_ws(arg, arg.find(id) + id.size());
          bool as_pointer = !id.empty() && (arg[0] == '&' || after >= arg.size() ||
                                            arg[after] == '+' || arg[after] == '-');
          bool is_tg = tg.count(id) > 0, is_dev = dev.count(id) > 0;
          if (!as_pointer || (!is_tg && !is_dev))
            continue;
          std::string space; // the parameter's space, if all overloads of this arity agree
          bool agree = true, any = false;
          for (auto& params : overloads) {
            if (params.size() != args.size() || !params[j].pointer)
              continue;
            agree = agree && (!any || params[j].space == space);
            space = params[j].space;
            any = true;
          }
          if (!any || !agree || space.empty())
            continue;
          if ((is_tg && space != "threadgroup") || (is_dev && space == "threadgroup"))
            err(at + c,
                "kernel '" + k.name + "': '" + name + "' takes a `" + space +
                    "` pointer as its argument " + std::to_string(j + 1) + ", but '" + id +
                    "' is " + (is_tg ? "threadgroup" : "device") +
                    " memory: MSL address spaces do not convert; give '" + name +
                    "' a parameter of `" + (is_tg ? "threadgroup" : "device") +
                    "` pointer type (an overload for each address space, if it needs both)");
        }
      }
    }
  };

  auto statement = [&](size_t begin, size_t end, char scope) {
    if (const KernelSource* k = kernel_at(begin); k && scope == 'F')
      check_calls(*k, begin, m.substr(begin, end - begin));
    // Leading access labels, template headers and attributes are not the declaration.
    size_t s = skip_ws(m, begin);
    for (bool again = true; again && s < end;) {
      again = false;
      for (const char* label : {"public", "private", "protected"}) {
        size_t n = std::strlen(label);
        if (m.compare(s, n, label) == 0 && m[skip_ws(m, s + n)] == ':') {
          s = skip_ws(m, skip_ws(m, s + n) + 1);
          again = true;
        }
      }
      if (m.compare(s, 8, "template") == 0 && m[skip_ws(m, s + 8)] == '<') {
        size_t lt = skip_ws(m, s + 8), gt = match_bracket(m, lt);
        if (gt == std::string::npos || gt >= end)
          return;
        s = skip_ws(m, gt + 1);
        again = true;
      }
      if (m.compare(s, 2, "[[") == 0) {
        s = skip_ws(m, m.find("]]", s) + 2);
        again = true;
      }
    }
    if (s >= end)
      return;
    std::string text = m.substr(s, end - s);
    std::string top = blank_nested(text);
    std::string first;
    for (size_t k = 0; k < text.size() && is_ident_char(text[k]); ++k)
      first += text[k];
    static const char* kNotDeclarations[] = {
        "typedef", "using",    "static_assert", "namespace", "friend", "return",
        "break",   "continue", "case",          "default",   "if",     "for",
        "while",   "do",       "switch",        "else",      "struct", "class",
        "union",   "enum",     "extern",        "template"};
    for (const char* w : kNotDeclarations)
      if (first == w)
        return;
    bool is_tg = has_word(top, "threadgroup");
    const KernelSource* k = kernel_at(s);
    if (is_tg && scope != 'F' && !declares_function(top))
      err(s,
          "a threadgroup variable outside a kernel: MSL declares threadgroup memory in a "
          "kernel's body (or as a [[threadgroup(n)]] parameter)");
    if (is_tg && first == "threadgroup" && !k) {
      bool pointers_only = true;
      for (auto [a, b] : split_declarators(top)) {
        std::string d = top.substr(a, b - a);
        d = d.substr(0, d.find('='));
        pointers_only =
            pointers_only && (d.find('*') != std::string::npos || d.find('&') != std::string::npos);
      }
      if (!pointers_only)
        err(s,
            "a threadgroup variable in a function that is not a kernel: MSL declares "
            "threadgroup memory in a kernel's body; declare it there and pass this function a "
            "`threadgroup T*`");
    }
    if (scope == 'N' && !is_constant_declaration(top) && !declares_function(top) &&
        !declared_name(top).empty())
      err(s,
          "program-scope variable '" + declared_name(top) +
              "' is not `constant`: in MSL, memory outside a kernel is the read-only constant "
              "address space (a writable global would be shared by every thread). Declare it "
              "`constant`, or make it a local variable of the kernel");
    if ((scope == 'C' || scope == 'F') && has_word(top, "static") &&
        !is_constant_declaration(top) && !declares_function(top))
      err(s,
          "static variable '" + declared_name(top) +
              "' is not `constant`: MSL has no writable static variables (one would be shared "
              "by every thread). Use a local variable, or `constant` for a table of constants");
    // Address spaces do not convert: threadgroup <-> device pointers in a kernel.
    if (k && scope == 'F') {
      auto& tg = tg_names[k];
      auto& dev = device_names[k];
      std::string name = declared_name(top);
      size_t eq = top.find('=');
      bool is_decl = has_word(top, "device") || has_word(top, "threadgroup");
      std::string lhs = is_decl ? name : trim(eq == std::string::npos ? "" : text.substr(0, eq));
      std::string rhs = eq == std::string::npos || (eq + 1 < top.size() && top[eq + 1] == '=')
                            ? ""
                            : leading_identifier(text.substr(eq + 1));
      bool lhs_device =
          (is_decl && has_word(top, "device") && top.find('*') != std::string::npos) ||
          (!is_decl && dev.count(lhs));
      bool lhs_tg = (is_decl && !has_word(top, "device") && top.find('*') != std::string::npos) ||
                    (!is_decl && tg.count(lhs));
      if (lhs_device && tg.count(rhs))
        err(s,
            "kernel '" + k->name + "': '" + lhs + "' is a device pointer and '" + rhs +
                "' is threadgroup memory: MSL address spaces do not convert; make '" + lhs +
                "' a `threadgroup` pointer");
      if (lhs_tg && !tg.count(lhs) && dev.count(rhs))
        err(s,
            "kernel '" + k->name + "': '" + lhs + "' is a threadgroup pointer and '" + rhs +
                "' is device memory: MSL address spaces do not convert; make '" + lhs +
                "' a `device` pointer");
      if (is_decl && has_word(top, "device") && top.find('*') != std::string::npos)
        dev.insert(name);
      else if (is_decl && top.find('*') != std::string::npos)
        tg.insert(name);
      // (device T*)tile
      for (size_t c = text.find("(device"); c != std::string::npos;
           c = text.find("(device", c + 1)) {
        size_t close = text.find(')', c);
        if (close != std::string::npos && tg.count(leading_identifier(text.substr(close + 1))))
          err(s + c,
              "kernel '" + k->name + "': a cast of threadgroup memory ('" +
                  leading_identifier(text.substr(close + 1)) +
                  "') to a device pointer: MSL address spaces do not convert");
      }
    }
  };

  std::vector<char> scopes;
  size_t stmt = 0;
  int parens = 0;
  for (size_t i = 0; i < m.size(); ++i) {
    char c = m[i];
    char scope = scopes.empty() ? 'N' : scopes.back();
    if (c == '(') {
      ++parens;
    } else if (c == ')') {
      --parens;
    } else if (c == '{') {
      size_t p = i;
      while (p > 0 && std::isspace((unsigned char)m[p - 1]))
        --p;
      char before = p > 0 ? m[p - 1] : ';';
      std::string head = blank_nested(m.substr(stmt, i - stmt));
      char kind;
      if (scope == 'I' || parens > 0 || before == '=' || before == ',' || before == '(' ||
          before == '{' || before == '[')
        kind = 'I';
      else if (has_word(head, "namespace") || has_word(head, "extern"))
        kind = 'N';
      else if (
          (has_word(head, "struct") || has_word(head, "class") || has_word(head, "union") ||
           has_word(head, "enum")) &&
          head.find('(') == std::string::npos)
        kind = 'C';
      else
        kind = 'F';
      if (kind == 'F' && scope != 'F' && scope != 'I')
        record_function(m.substr(stmt, i - stmt)); // a function's signature
      else if (kind == 'F' && scope == 'F') {
        if (const KernelSource* k = kernel_at(stmt)) // `if (...) {`, `for (...) {`
          check_calls(*k, stmt, m.substr(stmt, i - stmt));
      }
      if (kind != 'I')
        stmt = i + 1;
      scopes.push_back(kind);
    } else if (c == '}') {
      char kind = scopes.empty() ? 'N' : scopes.back();
      if (!scopes.empty())
        scopes.pop_back();
      if (kind != 'I')
        stmt = i + 1;
    } else if (c == ';' && parens == 0 && scope != 'I') {
      statement(stmt, i, scope);
      stmt = i + 1;
    }
  }
}

// The compiler's report of a failed compile, for a student: warnings are left out (only errors
// failed the compile), and the errors of strict MSL say what MSL offers instead.
std::string explain_diagnostics(const std::string& out) {
  static const std::pair<const char*, const char*> kPoisoned[] = {
      {"double", "MSL has no double: use float (or half)"},
      {"std",
       "MSL has no C++ standard library (std::): use the metal:: functions (metal::max, "
       "metal::min, ...) and fixed-size arrays"},
      {"new",
       "MSL has no dynamic memory (new): use a fixed-size array, a threadgroup array, or a "
       "device buffer the host allocates"},
      {"delete", "MSL has no dynamic memory (delete): use fixed-size arrays"},
      {"malloc",
       "MSL has no dynamic memory (malloc): use a fixed-size array, a threadgroup array, or a "
       "device buffer the host allocates"},
      {"calloc", "MSL has no dynamic memory (calloc): use fixed-size arrays"},
      {"realloc", "MSL has no dynamic memory (realloc): use fixed-size arrays"},
      {"throw",
       "MSL has no exceptions: check and return early, or write an error flag to a device "
       "buffer"},
      {"try", "MSL has no exceptions (try/catch)"},
      {"catch", "MSL has no exceptions (try/catch)"},
      {"virtual", "MSL has no virtual functions: use templates, or a switch on a tag"},
      {"thread_local",
       "MSL has no thread_local: a kernel's local variables belong to its thread already"},
      {"goto", "MSL has no goto: use loops with break and continue"},
      {"typeid", "MSL has no run-time type information (typeid)"},
      {"dynamic_cast", "MSL has no run-time type information (dynamic_cast)"},
  };
  // Context lines ("In file included from", "In function", "required from") are held until
  // the diagnostic they introduce: shown with an error, dropped with a warning.
  std::istringstream in(out);
  std::string line, result, context;
  std::string required_from; // the kernel source line that instantiated the runtime code
  bool in_warning = false;
  while (std::getline(in, line)) {
    bool is_error = line.find(": error:") != std::string::npos ||
                    line.find(": fatal error:") != std::string::npos;
    bool is_warning = line.find(": warning:") != std::string::npos;
    bool is_note = line.find(": note:") != std::string::npos;
    bool is_context = line.find("In file included from") != std::string::npos ||
                      line.rfind("                 from ", 0) == 0 ||
                      line.find("In function") != std::string::npos ||
                      line.find("In member function") != std::string::npos ||
                      line.find("In instantiation") != std::string::npos ||
                      line.find("required from") != std::string::npos ||
                      line.find("At global scope") != std::string::npos;
    if (line.rfind("cc1plus: some warnings", 0) == 0)
      continue;
    if (is_context) {
      context += line + "\n";
      size_t here = line.find(":   required from here");
      if (here != std::string::npos)
        required_from = trim(line.substr(0, here));
      continue;
    }
    if (is_warning) {
      in_warning = true;
      context.clear();
      continue;
    }
    if (is_error) {
      in_warning = false;
      result += context;
      context.clear();
    } else if (is_note && !context.empty() && !in_warning) {
      result += context;
      context.clear();
    }
    if (in_warning)
      continue;
    for (auto [word, why] : kPoisoned) {
      std::string gcc = std::string("attempt to use poisoned \"") + word + "\"";
      size_t p = line.find(gcc);
      if (p != std::string::npos)
        line = line.substr(0, p) + why;
    }
    if (is_error && line.find("attempt to use a poisoned identifier") != std::string::npos)
      line += " (clang does not name it: MSL has no double, std::, new/delete/malloc, exceptions, "
              "virtual, thread_local, goto or run-time type information)";
    if (is_error && line.find("variable length array") != std::string::npos)
      line = line.substr(0, line.find("error:") + 6) +
             " MSL has no variable-length arrays: an array's size must be a compile-time "
             "constant (constexpr, a template parameter, or a `constant` at program scope)";
    // A rule of the runtime (a static_assert of metalsim's MSL types, "MSL ...") is reported at
    // the kernel source line that broke it.
    size_t sa = line.find("static assertion failed: MSL");
    if (is_error && sa != std::string::npos && !required_from.empty())
      line = required_from + ": error: " + line.substr(sa + 25);
    if (is_error && line.find("read-only") != std::string::npos)
      line += " (MSL: `constant` memory is read-only; bind what a kernel writes as `device T*`)";
    result += line + "\n";
  }
  return result;
}

// The call graphs GCC wrote next to `so` (-fcallgraph-info): a cycle among the functions of the
// kernel sources is recursion, which MSL does not have. Returns the error ("" if none) and
// removes the graph files.
std::string find_recursion(const std::string& so, const std::string& runtime) {
  std::string dir = dirname_of(so), base = so.substr(dir.size() + 1);
  std::map<std::string, std::string> label; // node -> "name\nfile:line:col"
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> calls; // -> (callee, at)
  for (const std::string& f : list_dir(dir)) {
    if (f.rfind(base + "-", 0) != 0 || f.size() < 3 || f.compare(f.size() - 3, 3, ".ci") != 0)
      continue;
    std::string text = read_file(dir + "/" + f);
    std::remove((dir + "/" + f).c_str());
    std::istringstream in(text);
    std::string line;
    auto field = [](const std::string& l, const std::string& key) {
      size_t p = l.find(key + ": \"");
      if (p == std::string::npos)
        return std::string();
      p += key.size() + 3;
      return l.substr(p, l.find('"', p) - p);
    };
    while (std::getline(in, line)) {
      if (line.rfind("node:", 0) == 0)
        label[field(line, "title")] = field(line, "label");
      else if (line.rfind("edge:", 0) == 0)
        calls[field(line, "sourcename")].push_back(
            {field(line, "targetname"), field(line, "label")});
    }
  }
  auto in_kernel_source = [&](const std::string& node) {
    const std::string& l = label[node];
    size_t nl = l.find("\\n");
    std::string where = nl == std::string::npos ? "" : l.substr(nl + 2);
    return !where.empty() && where.rfind(runtime, 0) != 0 && where[0] != '<' &&
           where.find("/usr/") != 0;
  };
  auto name_of = [&](const std::string& node) {
    const std::string& l = label[node];
    return l.substr(0, l.find("\\n"));
  };
  // Depth-first search for a back edge.
  std::map<std::string, int> state; // 1: on the stack, 2: done
  std::vector<std::string> stack;
  std::string found;
  std::function<void(const std::string&)> visit = [&](const std::string& n) {
    state[n] = 1;
    stack.push_back(n);
    for (auto& [callee, at] : calls[n]) {
      if (!found.empty() || !in_kernel_source(callee))
        continue;
      if (state[callee] == 1) {
        std::string cycle;
        size_t from = std::find(stack.begin(), stack.end(), callee) - stack.begin();
        for (size_t i = from; i < stack.size(); ++i)
          cycle += "'" + name_of(stack[i]) + "' calls ";
        cycle += "'" + name_of(callee) + "'";
        std::string where = at.substr(0, at.rfind(':'));
        found = where + ": error: MSL has no recursion: " + cycle +
                " (write it as a loop, with an explicit stack in a fixed-size array if needed)\n";
      } else if (state[callee] == 0) {
        visit(callee);
      }
    }
    stack.pop_back();
    state[n] = 2;
  };
  for (auto& [node, _] : label)
    if (found.empty() && state[node] == 0 && in_kernel_source(node))
      visit(node);
  return found;
}

} // namespace detail
} // namespace metalsim
