// deepcontext: SmoothL1Loss (see smooth_l1_loss_layer.hpp).
#include <cmath>
#include <vector>

#include "caffe/layers/smooth_l1_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void SmoothL1LossLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const Dtype sigma = this->layer_param_.smooth_l1_loss_param().sigma();
  CHECK_GT(sigma, 0) << "smooth_l1_loss_param.sigma must be > 0";
  sigma2_ = sigma * sigma;
}

template <typename Dtype>
void SmoothL1LossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::Reshape(bottom, top);
  for (int i = 1; i < bottom.size(); ++i) {
    CHECK_EQ(bottom[0]->count(), bottom[i]->count())
        << "SmoothL1Loss bottom " << i << " must match the prediction's shape";
  }
  diff_.ReshapeLike(*bottom[0]);
  errors_.ReshapeLike(*bottom[0]);
}

template <typename Dtype>
void SmoothL1LossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  Dtype* d = diff_.mutable_cpu_data();
  Dtype* e = errors_.mutable_cpu_data();
  caffe_sub(count, bottom[0]->cpu_data(), bottom[1]->cpu_data(), d);
  if (bottom.size() > 2) {
    caffe_mul(count, bottom[2]->cpu_data(), d, d);
  }
  for (int i = 0; i < count; ++i) {
    const Dtype x = d[i];
    const Dtype ax = std::fabs(x);
    e[i] = ax < 1 / sigma2_ ? Dtype(0.5) * x * x * sigma2_
                            : ax - Dtype(0.5) / sigma2_;
  }
  if (bottom.size() > 3) {
    caffe_mul(count, bottom[3]->cpu_data(), e, e);
  }
  top[0]->mutable_cpu_data()[0] =
      caffe_cpu_asum(count, e) / bottom[0]->num();
}

template <typename Dtype>
void SmoothL1LossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down,
      const vector<Blob<Dtype>*>& bottom) {
  const int count = bottom[0]->count();
  Dtype* d = diff_.mutable_cpu_data();
  for (int i = 0; i < count; ++i) {   // f'(x)
    const Dtype x = d[i];
    d[i] = std::fabs(x) < 1 / sigma2_ ? sigma2_ * x
                                      : Dtype((x > 0) - (x < 0));
  }
  for (int i = 0; i < 2; ++i) {
    if (!propagate_down[i]) {
      continue;
    }
    const Dtype alpha = (i == 0 ? 1 : -1) * top[0]->cpu_diff()[0]
        / bottom[0]->num();
    Dtype* g = bottom[i]->mutable_cpu_diff();
    caffe_cpu_axpby(count, alpha, d, Dtype(0), g);
    for (int w = 2; w < bottom.size(); ++w) {
      caffe_mul(count, bottom[w]->cpu_data(), g, g);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(SmoothL1LossLayer);
#endif

INSTANTIATE_CLASS(SmoothL1LossLayer);
REGISTER_LAYER_CLASS(SmoothL1Loss);

}  // namespace caffe
