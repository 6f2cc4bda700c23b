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
#       Mac whose MLX has Metal  ->  <package>/<package>.metallib (MLX's mlx_build_metallib),
#       anywhere else            ->  <package>/<package>.metalsim, the list of .metal sources
#                                    that metalsim (src/metalsim) compiles on first use.
#     (-DMETALSIM_FORCE=ON takes the second branch on a Mac as well.)
# eval_gpu finds them with metalsim::extension_library (src/metalsim/include/metalsim/
# mlx_extension.h). tools/tiny_attn_tools/build_ext.py (`pdm run build-ext`, `-ref`) runs it.

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
  if(APPLE AND MLX_BUILD_METAL AND NOT METALSIM_FORCE)
    # gpu:: is mlx::core::metal (metalsim/gpu_backend.h); metal-cpp comes with the mlx target.
    # METALSIM_USE_METAL makes the header stop with an #error if <Metal/Metal.hpp> is missing,
    # instead of falling back to the simulator that this branch does not link.
    target_compile_definitions(_core PRIVATE METALSIM_USE_METAL=1)
    if(metal_sources)
      mlx_build_metallib(
        TARGET ${package}_metallib
        TITLE ${package}
        SOURCES ${metal_sources}
        INCLUDE_DIRS "${dir}" ${MLX_INCLUDE_DIRS}
        OUTPUT_DIRECTORY "${out}")
      add_dependencies(_core ${package}_metallib)
    endif()
  else()
    # No Metal (or -DMETALSIM_FORCE=ON): the same .metal kernels and the same eval_gpu code run
    # on the simulator.
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
endfunction()
