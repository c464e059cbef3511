// deepcontext: ROIPooling, the layer of Fast R-CNN's Caffe fork (Girshick,
// ICCV 2015) that BVLC Caffe lacks, written anew for caffe_ext.  Same type
// name, parameters (ROIPoolingParameter, LayerParameter field 8266711) and
// numbers as that fork, so its prototxts and caffemodels load unchanged.
#ifndef CAFFE_ROI_POOLING_LAYER_HPP_
#define CAFFE_ROI_POOLING_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief Max-pools every region of interest into a fixed pooled_h x pooled_w
 *        grid of bins.
 *
 * bottom[0]: features (N x C x H x W).  bottom[1]: R regions, each
 * (batch index, x1, y1, x2, y2) in input-image pixels; spatial_scale maps
 * them onto the feature map (1/16 for conv5 of CaffeNet-style nets).
 * top[0]: R x C x pooled_h x pooled_w.  An empty bin outputs 0.  Gradients
 * flow to the features only (to the arg-max of each bin).
 */
template <typename Dtype>
class ROIPoolingLayer : public Layer<Dtype> {
 public:
  explicit ROIPoolingLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "ROIPooling"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
  // the regions are inputs, not something to learn
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index == 0;
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

  int channels_, height_, width_;
  int pooled_h_, pooled_w_;
  Dtype spatial_scale_;
  // index (within one channel plane) of each output's maximum, -1 if empty
  Blob<int> argmax_;
};

}  // namespace caffe

#endif  // CAFFE_ROI_POOLING_LAYER_HPP_
