// The one schema of the faster_rcnn operators (torch.ops.faster_rcnn.*) and the Python module that loads them.
// Kernels are registered per backend in cpu/*.cpp and cuda/*.cu; autograd lives in lib/model/roi_layers.
#include <Python.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "checks.h"

// Importing lib.model._C runs the static registrations below; the module itself has no attributes.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace faster_rcnn {

namespace {

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

#ifndef WITH_CUDA
// Without this, a CUDA tensor reaching a CPU-only build fails with the dispatcher's generic "could not run
// with arguments from the CUDA backend", which does not tell the user to rebuild.
void cuda_unavailable(const c10::OperatorHandle& op, torch::jit::Stack*) {
  FRCNN_CHECK(false, op.schema().name(),
              ": got CUDA tensors, but the faster_rcnn extension was built without CUDA; rebuild it where nvcc "
              "is found (or with FORCE_CUDA=1): python setup.py build_ext --inplace");
}
#endif

}  // namespace

TORCH_LIBRARY(faster_rcnn, m) {
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  m.def("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor");
  m.def("nms_padded(Tensor dets, Tensor scores, float iou_threshold, int max_out) -> (Tensor, Tensor)");
  m.def(
      "roi_pool_forward(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width)"
      " -> (Tensor, Tensor)");
  m.def(
      "roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height,"
      " int pooled_width, int batch_size, int channels, int height, int width) -> Tensor");
  m.def(
      "roi_align_forward(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width,"
      " int sampling_ratio) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width,"
      " int batch_size, int channels, int height, int width, int sampling_ratio) -> Tensor");
}

#ifndef WITH_CUDA
TORCH_LIBRARY_IMPL(faster_rcnn, CUDA, m) {
  for (const char* name : {"nms", "nms_padded", "roi_pool_forward", "roi_pool_backward", "roi_align_forward",
                           "roi_align_backward"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&cuda_unavailable>());
  }
}
#endif

}  // namespace faster_rcnn
