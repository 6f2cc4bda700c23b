# How the course builds an MLX C++ extension. Shared by the student's tree (src/extensions,
# package tiny_attn_ext), the reference (refsol/extensions_ref, package tiny_attn_ext_ref) and
# metalsim's example (src/metalsim/examples/axpby): each CMakeLists.txt includes this file and
# calls
#
#   tiny_attn_add_extension(<package> [COMMON <folder>])
#
# which builds, from the calling folder,
#   - the Python module <package>/_core.<python-suffix> (nanobind, in MLX's nanobind domain)
#     from every src/*.cpp, and every *.cpp of the COMMON folder, whose headers are on the
#     include path: adding a .cpp file needs no edit anywhere. The two course extensions pass
#     COMMON ${TINY_ATTN_EXTENSION_COMMON} (src/extension_common): the bindings and the ops'
#     headers, which both write against and neither copies;
#   - the kernels of every src/*.metal file, for the GPU backend at hand:
#       Mac whose MLX has Metal, with Apple's Metal compiler
#                                ->  <package>/<package>.metallib (MLX's mlx_build_metallib),
#                                    for macOS TINY_ATTN_MACOS_DEPLOYMENT_TARGET and later;
#       anywhere else            ->  <package>/<package>.metalsim, the list of .metal sources
#                                    that metalsim (src/metalsim) compiles on first use.
#     (-DMETALSIM_FORCE=ON takes the second branch on a Mac as well.)
# eval_gpu finds them with metalsim::extension_library (src/metalsim/include/metalsim/
# mlx_extension.h). tools/tiny_attn_tools/build_ext.py (`pdm run build-ext`, `-ref`) runs it.
#
# The Metal compiler (`xcrun -sdk macosx metal`) comes with Xcode, not with the command line
# tools, and recent Xcode downloads it separately (xcodebuild -downloadComponent MetalToolchain).
# Configuring on a Mac tries it on a one-line kernel first; without it, the extension is built
# for metalsim, with one warning, so Weeks 1-2 (which need no Metal) build and run all the same.

get_filename_component(TINY_ATTN_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
set(TINY_ATTN_METALSIM_DIR "${TINY_ATTN_ROOT}/src/metalsim")
set(TINY_ATTN_EXTENSION_COMMON "${TINY_ATTN_ROOT}/src/extension_common")

# Python, nanobind and MLX all come from the course's virtual environment.
find_package(Python 3.10 COMPONENTS Interpreter Development.Module REQUIRED)
execute_process(
  COMMAND "${Python_EXECUTABLE}" -m nanobind --cmake_dir
  OUTPUT_STRIP_TRAILING_WHITESPACE
  OUTPUT_VARIABLE nanobind_ROOT)
find_package(nanobind CONFIG REQUIRED)
execute_process(
  COMMAND "${Python_EXECUTABLE}" -m mlx --cmake-dir
  OUTPUT_STRIP_TRAILING_WHITESPACE
  OUTPUT_VARIABLE MLX_ROOT)
find_package(MLX CONFIG REQUIRED)

if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release)
endif()

# The oldest macOS the metallib loads on. Without one, the Metal compiler stamps the SDK's own
# version and an older macOS refuses the library, so MLX's build pins one too. 14 is Metal 3.1
# (__METAL_VERSION__ 310), which has the bfloat type the bfloat16 kernels need.
set(TINY_ATTN_MACOS_DEPLOYMENT_TARGET
    "14.0"
    CACHE STRING "oldest macOS the extension's metallib runs on (14.0 and later have bfloat16)")

# tiny_attn_metal_compiler_works(<result-var> <why-var>): whether `xcrun -sdk macosx metal`
# compiles and links a one-line kernel for the deployment target. <why-var> gets the compiler's
# own words when it does not.
function(tiny_attn_metal_compiler_works result why)
  set(${result}
      FALSE
      PARENT_SCOPE)
  find_program(TINY_ATTN_XCRUN xcrun)
  if(NOT TINY_ATTN_XCRUN)
    set(${why}
        "xcrun was not found"
        PARENT_SCOPE)
    return()
  endif()
  set(probe "${CMAKE_CURRENT_BINARY_DIR}/metal_probe")
  file(MAKE_DIRECTORY "${probe}")
  file(WRITE "${probe}/probe.metal"
       "kernel void probe(device float* x [[buffer(0)]]) { x[0] = 1.0f; }\n")
  set(target_flag "-mmacosx-version-min=${TINY_ATTN_MACOS_DEPLOYMENT_TARGET}")
  execute_process(
    COMMAND "${TINY_ATTN_XCRUN}" -sdk macosx metal ${target_flag} -c "${probe}/probe.metal" -o
            "${probe}/probe.air"
    RESULT_VARIABLE rc
    OUTPUT_VARIABLE out
    ERROR_VARIABLE out
    TIMEOUT 120)
  if(rc EQUAL 0)
    execute_process(
      COMMAND "${TINY_ATTN_XCRUN}" -sdk macosx metal ${target_flag} "${probe}/probe.air" -o
              "${probe}/probe.metallib"
      RESULT_VARIABLE rc
      OUTPUT_VARIABLE out
      ERROR_VARIABLE out
      TIMEOUT 120)
  endif()
  if(rc EQUAL 0)
    set(${result}
        TRUE
        PARENT_SCOPE)
  else()
    string(STRIP "${out}" out)
    set(${why}
        "${out}"
        PARENT_SCOPE)
  endif()
endfunction()

function(tiny_attn_add_extension package)
  cmake_parse_arguments(arg "" "COMMON" "" ${ARGN})
  set(dir "${CMAKE_CURRENT_SOURCE_DIR}")
  set(out "${dir}/${package}")

  file(GLOB sources CONFIGURE_DEPENDS "${dir}/src/*.cpp")
  set(include_dirs "${dir}/src" "${TINY_ATTN_METALSIM_DIR}/include")
  if(arg_COMMON)
    file(GLOB common_sources CONFIGURE_DEPENDS "${arg_COMMON}/*.cpp")
    list(APPEND sources ${common_sources})
    list(APPEND include_dirs "${arg_COMMON}")
  endif()
  nanobind_add_module(_core NB_STATIC NOMINSIZE NB_DOMAIN mlx ${sources})
  target_include_directories(_core PRIVATE ${include_dirs})
  target_link_libraries(_core PRIVATE mlx)
  # The course's code is C++17; MLX's CMake target asks for C++20 (its headers use it), so the
  # module compiles as C++20, as MLX's own extension example does.
  set_target_properties(_core PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${out}")
  # -Wno-psabi: GCC's note that passing 8-float vectors (simd.h) depends on -mavx.
  target_compile_options(_core PRIVATE -Wall -Wextra -Wno-unused-parameter
                                       $<$<CXX_COMPILER_ID:GNU>:-Wno-psabi>)
  # libmlx is found at run time through the build RPATH CMake records for the imported mlx
  # target (its folder in the virtual environment); nothing else is loaded from next to _core.

  file(GLOB metal_sources CONFIGURE_DEPENDS "${dir}/src/*.metal")
  set(use_metal FALSE)
  if(APPLE AND MLX_BUILD_METAL AND NOT METALSIM_FORCE)
    tiny_attn_metal_compiler_works(use_metal why)
    if(NOT use_metal)
      message(
        WARNING
          "Apple's Metal compiler does not work here (xcrun -sdk macosx metal: ${why}).\n"
          "${package} is built without its metallib: its GPU ops (Week 3) run on metalsim, the "
          "course's CPU simulator (correct, but slow); Weeks 1-2 need no Metal at all.\n"
          "For the real GPU: install Xcode from the App Store, then\n"
          "  sudo xcode-select -s /Applications/Xcode.app\n"
          "  xcodebuild -downloadComponent MetalToolchain\n"
          "and rebuild: rm -rf build/${package} && pdm run build-ext (build-ext-ref for the "
          "reference).")
    endif()
  endif()
  if(use_metal)
    # gpu:: is mlx::core::metal (metalsim/mlx_extension.h); metal-cpp comes with the mlx target.
    # METALSIM_USE_METAL makes the header stop with an #error if <Metal/Metal.hpp> is missing,
    # instead of falling back to the simulator that this branch does not link.
    target_compile_definitions(_core PRIVATE METALSIM_USE_METAL=1)
    if(metal_sources)
      mlx_build_metallib(
        TARGET ${package}_metallib
        TITLE ${package}
        SOURCES ${metal_sources}
        INCLUDE_DIRS "${dir}" ${MLX_INCLUDE_DIRS}
        DEPLOYMENT_TARGET ${TINY_ATTN_MACOS_DEPLOYMENT_TARGET}
        OUTPUT_DIRECTORY "${out}")
      add_dependencies(_core ${package}_metallib)
    endif()
  else()
    # No Metal, no Metal compiler, or -DMETALSIM_FORCE=ON: the same .metal kernels and the same
    # eval_gpu code run on the simulator.
    if(NOT TARGET metalsim::host)
      add_subdirectory("${TINY_ATTN_METALSIM_DIR}" metalsim)
    endif()
    target_link_libraries(_core PRIVATE metalsim::host)
    target_compile_definitions(_core PRIVATE METALSIM_FORCE=1)
    if(metal_sources)
      metalsim_build_library(
        TARGET ${package}_metalsim
        TITLE ${package}
        SOURCES ${metal_sources}
        OUTPUT_DIRECTORY "${out}")
      add_dependencies(_core ${package}_metalsim)
    endif()
  endif()
  # The bfloat16 kernels are compiled only for Metal 3.1 (macOS 14) and later; a build for an
  # older macOS tells the host, which then refuses bfloat16 on the GPU with a ValueError
  # (flash_attention_gpu.h). Both branches set it, so a metalsim build refuses what the Mac it
  # stands for would.
  if(TINY_ATTN_MACOS_DEPLOYMENT_TARGET VERSION_GREATER_EQUAL 14.0)
    target_compile_definitions(_core PRIVATE TINY_ATTN_METAL_BFLOAT16=1)
  else()
    target_compile_definitions(_core PRIVATE TINY_ATTN_METAL_BFLOAT16=0)
  endif()
endfunction()
