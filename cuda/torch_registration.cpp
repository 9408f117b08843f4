// torch_registration.cpp: defines redcompile's op schemas in C++, from the generated header.
//
// The schemas come from the OpDefs in ops/ (cuda/gen_registrations.py writes
// torch_ops_generated.h), so there is one definition per op. Python's register_torch_op defines
// the same schemas when it runs first; this library then leaves them alone instead of failing on
// a duplicate definition, which makes the load order of the Python package and of this library
// irrelevant. Hence a TORCH_LIBRARY_FRAGMENT with a per-op check rather than TORCH_LIBRARY, which
// would refuse a namespace that Python had already used. The fakes (shape functions) and the CPU
// references are registered from Python; set_python_module tells torch which module that is,
// and lets torch import it on demand. This file needs no CUDA: it builds and is checked on CPU
// (cuda/build.sh --check). The CUDA implementations are in torch_bindings.cpp.
#include <string>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "torch_ops_generated.h"

namespace {

bool schema_defined(const char* name) {
  const c10::OperatorName op{std::string("redcompile::") + name, ""};
  return c10::Dispatcher::singleton().findSchema(op).has_value();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(redcompile, m) {
  m.set_python_module(redcompile_generated::kPythonModule);
  for (const auto& op : redcompile_generated::kOpSchemas) {
    if (!schema_defined(op.name)) m.def(op.schema);
  }
}
