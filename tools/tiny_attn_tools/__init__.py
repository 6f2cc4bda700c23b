"""The course's tooling: everything behind the `pdm run` commands, and the test plumbing.

  course        where things are, which days exist, running graded tests
  run_tests     pdm run test / test-refsol          grade        pdm run grade
  copy_test     pdm run copy-test                   build_ext    pdm run build-ext(-ref)
  testing       what the graded tests share: seeded inputs, oracles, tolerances, fixtures
  check_*       the course's own checks (skeleton, api, solvable, book, installation)
  demo          pdm run demo                        cxx_format   C++ half of format / lint
  bootstrap     the `pre_run` hook: keeps the environment in step with pdm.lock

The course packages (tiny_attn, tiny_attn_ref, their extensions, metalsim) never import it.
"""
