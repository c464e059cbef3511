// deepcontext: SmoothL1Loss on the GPU (see smooth_l1_loss_layer.hpp).
#include <vector>

#include "caffe/layers/smooth_l1_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
__global__ void SmoothL1Forward(const int n, const Dtype* in, Dtype* out,
    const Dtype sigma2) {
  CUDA_KERNEL_LOOP(index, n) {
    const Dtype x = in[index];
    const Dtype ax = abs(x);
    out[index] = ax < 1 / sigma2 ? Dtype(0.5) * x * x * sigma2
                                 : ax - Dtype(0.5) / sigma2;
  }
}

template <typename Dtype>
__global__ void SmoothL1Derivative(const int n, Dtype* d,
    const Dtype sigma2) {
  CUDA_KERNEL_LOOP(index, n) {
    const Dtype x = d[index];
    d[index] = abs(x) < 1 / sigma2 ? sigma2 * x : Dtype((x > 0) - (x < 0));
  }
}

template <typename Dtype>
void SmoothL1LossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  Dtype* d = diff_.mutable_gpu_data();
  Dtype* e = errors_.mutable_gpu_data();
  caffe_gpu_sub(count, bottom[0]->gpu_data(), bottom[1]->gpu_data(), d);
  if (bottom.size() > 2) {
    caffe_gpu_mul(count, bottom[2]->gpu_data(), d, d);
  }
  // NOLINT_NEXT_LINE(whitespace/operators)
  SmoothL1Forward<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, d, e, sigma2_);
  CUDA_POST_KERNEL_CHECK;
  if (bottom.size() > 3) {
    caffe_gpu_mul(count, bottom[3]->gpu_data(), e, e);
  }
  Dtype loss;
  caffe_gpu_asum(count, e, &loss);
  top[0]->mutable_cpu_data()[0] = loss / bottom[0]->num();
}

template <typename Dtype>
void SmoothL1LossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down,
      const vector<Blob<Dtype>*>& bottom) {
  const int count = bottom[0]->count();
  Dtype* d = diff_.mutable_gpu_data();
  // NOLINT_NEXT_LINE(whitespace/operators)
  SmoothL1Derivative<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, d, sigma2_);
  CUDA_POST_KERNEL_CHECK;
  for (int i = 0; i < 2; ++i) {
    if (!propagate_down[i]) {
      continue;
    }
    const Dtype alpha = (i == 0 ? 1 : -1) * top[0]->cpu_diff()[0]
        / bottom[0]->num();
    Dtype* g = bottom[i]->mutable_gpu_diff();
    caffe_gpu_axpby(count, alpha, d, Dtype(0), g);
    for (int w = 2; w < bottom.size(); ++w) {
      caffe_gpu_mul(count, bottom[w]->gpu_data(), g, g);
    }
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(SmoothL1LossLayer);

}  // namespace caffe
