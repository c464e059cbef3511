// deepcontext: SmoothL1Loss, the bounding-box regression loss of Fast R-CNN's
// Caffe fork, with py-faster-rcnn's sigma (SmoothL1LossParameter, field
// 8266712), written anew for caffe_ext; wire- and text-compatible with both.
#ifndef CAFFE_SMOOTH_L1_LOSS_LAYER_HPP_
#define CAFFE_SMOOTH_L1_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/layers/loss_layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief Smooth L1 loss:  sum_i  out_i * f(in_i * (pred_i - target_i)) / N
 *
 * with f(x) = 0.5 (sigma x)^2 if |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2,
 * and N = bottom[0]->num().  bottom: prediction, target, and optionally the
 * inside weights (in) and the outside weights (out), both 1 when absent.
 * Gradients flow to prediction and target, never to the weights.
 */
template <typename Dtype>
class SmoothL1LossLayer : public LossLayer<Dtype> {
 public:
  explicit SmoothL1LossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "SmoothL1Loss"; }
  virtual inline int ExactNumBottomBlobs() const { return -1; }
  virtual inline int MinBottomBlobs() const { return 2; }
  virtual inline int MaxBottomBlobs() const { return 4; }
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index < 2;
  }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  Blob<Dtype> diff_;    // in * (pred - target), then f'(that)
  Blob<Dtype> errors_;  // out * f(in * (pred - target))
  Dtype sigma2_;
};

}  // namespace caffe

#endif  // CAFFE_SMOOTH_L1_LOSS_LAYER_HPP_
