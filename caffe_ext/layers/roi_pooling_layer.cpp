// deepcontext: ROIPooling (see roi_pooling_layer.hpp).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include "caffe/layers/roi_pooling_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void ROIPoolingLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const ROIPoolingParameter& p = this->layer_param_.roi_pooling_param();
  CHECK_GT(p.pooled_h(), 0) << "roi_pooling_param.pooled_h must be > 0";
  CHECK_GT(p.pooled_w(), 0) << "roi_pooling_param.pooled_w must be > 0";
  pooled_h_ = p.pooled_h();
  pooled_w_ = p.pooled_w();
  spatial_scale_ = p.spatial_scale();
}

template <typename Dtype>
void ROIPoolingLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  CHECK_EQ(bottom[1]->count(1), 5)
      << "ROIPooling regions are (batch index, x1, y1, x2, y2)";
  channels_ = bottom[0]->channels();
  height_ = bottom[0]->height();
  width_ = bottom[0]->width();
  const int num_rois = bottom[1]->num();
  top[0]->Reshape(num_rois, channels_, pooled_h_, pooled_w_);
  argmax_.Reshape(num_rois, channels_, pooled_h_, pooled_w_);
}

template <typename Dtype>
void ROIPoolingLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const Dtype* data = bottom[0]->cpu_data();
  const Dtype* rois = bottom[1]->cpu_data();
  Dtype* out = top[0]->mutable_cpu_data();
  int* argmax = argmax_.mutable_cpu_data();
  const int num_rois = bottom[1]->num();
  const int batch = bottom[0]->num();
  const int plane = height_ * width_;
  for (int r = 0; r < num_rois; ++r) {
    const Dtype* roi = rois + r * 5;
    const int n = static_cast<int>(roi[0]);
    CHECK_GE(n, 0) << "region " << r << " has batch index " << n;
    CHECK_LT(n, batch) << "region " << r << " has batch index " << n;
    // As Fast R-CNN: the region's ends are rounded to feature cells, the
    // region is at least one cell wide, bins are equal fractions of it
    // rounded outwards, then clipped to the feature map.
    const int x1 = static_cast<int>(round(roi[1] * spatial_scale_));
    const int y1 = static_cast<int>(round(roi[2] * spatial_scale_));
    const int x2 = static_cast<int>(round(roi[3] * spatial_scale_));
    const int y2 = static_cast<int>(round(roi[4] * spatial_scale_));
    const Dtype bin_h = static_cast<Dtype>(std::max(y2 - y1 + 1, 1))
        / static_cast<Dtype>(pooled_h_);
    const Dtype bin_w = static_cast<Dtype>(std::max(x2 - x1 + 1, 1))
        / static_cast<Dtype>(pooled_w_);
    for (int c = 0; c < channels_; ++c) {
      const Dtype* src = data + (n * channels_ + c) * plane;
      for (int ph = 0; ph < pooled_h_; ++ph) {
        int hs = static_cast<int>(floor(ph * bin_h)) + y1;
        int he = static_cast<int>(ceil((ph + 1) * bin_h)) + y1;
        hs = std::min(std::max(hs, 0), height_);
        he = std::min(std::max(he, 0), height_);
        for (int pw = 0; pw < pooled_w_; ++pw) {
          int ws = static_cast<int>(floor(pw * bin_w)) + x1;
          int we = static_cast<int>(ceil((pw + 1) * bin_w)) + x1;
          ws = std::min(std::max(ws, 0), width_);
          we = std::min(std::max(we, 0), width_);
          const int o = ((r * channels_ + c) * pooled_h_ + ph) * pooled_w_ + pw;
          if (he <= hs || we <= ws) {
            out[o] = 0;
            argmax[o] = -1;
            continue;
          }
          Dtype best = -FLT_MAX;
          int best_i = -1;
          for (int h = hs; h < he; ++h) {
            for (int w = ws; w < we; ++w) {
              const int i = h * width_ + w;
              if (src[i] > best) {
                best = src[i];
                best_i = i;
              }
            }
          }
          out[o] = best;
          argmax[o] = best_i;
        }
      }
    }
  }
}

template <typename Dtype>
void ROIPoolingLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down,
      const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const Dtype* top_diff = top[0]->cpu_diff();
  const Dtype* rois = bottom[1]->cpu_data();
  const int* argmax = argmax_.cpu_data();
  Dtype* diff = bottom[0]->mutable_cpu_diff();
  caffe_set(bottom[0]->count(), Dtype(0), diff);
  const int plane = height_ * width_;
  const int bins = pooled_h_ * pooled_w_;
  for (int r = 0; r < top[0]->num(); ++r) {
    const int n = static_cast<int>(rois[r * 5]);
    for (int c = 0; c < channels_; ++c) {
      const int o = (r * channels_ + c) * bins;
      Dtype* dst = diff + (n * channels_ + c) * plane;
      for (int b = 0; b < bins; ++b) {
        if (argmax[o + b] >= 0) {
          dst[argmax[o + b]] += top_diff[o + b];
        }
      }
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(ROIPoolingLayer);
#endif

INSTANTIATE_CLASS(ROIPoolingLayer);
REGISTER_LAYER_CLASS(ROIPooling);

}  // namespace caffe
