// deepcontext: ROIPooling on the GPU (see roi_pooling_layer.hpp).
#include <cfloat>
#include <vector>

#include "caffe/layers/roi_pooling_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// The bins of one region along one axis, as in Forward_cpu.
template <typename Dtype>
__device__ inline void roi_extent(const Dtype* roi, Dtype scale, int* x1,
    int* y1, Dtype* bin_w, Dtype* bin_h, int pooled_w, int pooled_h) {
  *x1 = static_cast<int>(round(roi[1] * scale));
  *y1 = static_cast<int>(round(roi[2] * scale));
  const int x2 = static_cast<int>(round(roi[3] * scale));
  const int y2 = static_cast<int>(round(roi[4] * scale));
  *bin_w = static_cast<Dtype>(max(x2 - *x1 + 1, 1)) / pooled_w;
  *bin_h = static_cast<Dtype>(max(y2 - *y1 + 1, 1)) / pooled_h;
}

template <typename Dtype>
__global__ void ROIPoolForward(const int nthreads, const Dtype* data,
    const Dtype scale, const int channels, const int height, const int width,
    const int pooled_h, const int pooled_w, const Dtype* rois, Dtype* out,
    int* argmax) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int pw = index % pooled_w;
    const int ph = (index / pooled_w) % pooled_h;
    const int c = (index / pooled_w / pooled_h) % channels;
    const int r = index / pooled_w / pooled_h / channels;
    const Dtype* roi = rois + r * 5;
    const int n = static_cast<int>(roi[0]);
    int x1, y1;
    Dtype bin_w, bin_h;
    roi_extent(roi, scale, &x1, &y1, &bin_w, &bin_h, pooled_w, pooled_h);
    int hs = static_cast<int>(floor(ph * bin_h)) + y1;
    int he = static_cast<int>(ceil((ph + 1) * bin_h)) + y1;
    int ws = static_cast<int>(floor(pw * bin_w)) + x1;
    int we = static_cast<int>(ceil((pw + 1) * bin_w)) + x1;
    hs = min(max(hs, 0), height);
    he = min(max(he, 0), height);
    ws = min(max(ws, 0), width);
    we = min(max(we, 0), width);
    if (he <= hs || we <= ws) {
      out[index] = 0;
      argmax[index] = -1;
      continue;
    }
    const Dtype* src = data + (n * channels + c) * height * width;
    Dtype best = -FLT_MAX;
    int best_i = -1;
    for (int h = hs; h < he; ++h) {
      for (int w = ws; w < we; ++w) {
        const int i = h * width + w;
        if (src[i] > best) {
          best = src[i];
          best_i = i;
        }
      }
    }
    out[index] = best;
    argmax[index] = best_i;
  }
}

template <typename Dtype>
void ROIPoolingLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int count = top[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  ROIPoolForward<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, bottom[0]->gpu_data(), spatial_scale_, channels_, height_,
      width_, pooled_h_, pooled_w_, bottom[1]->gpu_data(),
      top[0]->mutable_gpu_data(), argmax_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

// One thread per feature cell gathers the gradients of every bin whose
// maximum it was: deterministic, no atomics.  Only bins that can contain
// the cell are visited.
template <typename Dtype>
__global__ void ROIPoolBackward(const int nthreads, const Dtype* top_diff,
    const int* argmax, const int num_rois, const Dtype scale,
    const int channels, const int height, const int width,
    const int pooled_h, const int pooled_w, const Dtype* rois,
    Dtype* bottom_diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int w = index % width;
    const int h = (index / width) % height;
    const int c = (index / width / height) % channels;
    const int n = index / width / height / channels;
    const int cell = h * width + w;
    Dtype grad = 0;
    for (int r = 0; r < num_rois; ++r) {
      const Dtype* roi = rois + r * 5;
      if (static_cast<int>(roi[0]) != n) {
        continue;
      }
      int x1, y1;
      Dtype bin_w, bin_h;
      roi_extent(roi, scale, &x1, &y1, &bin_w, &bin_h, pooled_w, pooled_h);
      // bins ph with floor(ph*bin_h)+y1 <= h < ceil((ph+1)*bin_h)+y1
      int ph0 = static_cast<int>(floor(static_cast<Dtype>(h - y1) / bin_h));
      int ph1 = static_cast<int>(ceil(static_cast<Dtype>(h - y1 + 1) / bin_h));
      int pw0 = static_cast<int>(floor(static_cast<Dtype>(w - x1) / bin_w));
      int pw1 = static_cast<int>(ceil(static_cast<Dtype>(w - x1 + 1) / bin_w));
      ph0 = min(max(ph0 - 1, 0), pooled_h);
      ph1 = min(max(ph1 + 1, 0), pooled_h);
      pw0 = min(max(pw0 - 1, 0), pooled_w);
      pw1 = min(max(pw1 + 1, 0), pooled_w);
      const int offset = (r * channels + c) * pooled_h * pooled_w;
      for (int ph = ph0; ph < ph1; ++ph) {
        for (int pw = pw0; pw < pw1; ++pw) {
          if (argmax[offset + ph * pooled_w + pw] == cell) {
            grad += top_diff[offset + ph * pooled_w + pw];
          }
        }
      }
    }
    bottom_diff[index] = grad;
  }
}

template <typename Dtype>
void ROIPoolingLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down,
      const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const int count = bottom[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  ROIPoolBackward<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, top[0]->gpu_diff(), argmax_.gpu_data(), top[0]->num(),
      spatial_scale_, channels_, height_, width_, pooled_h_, pooled_w_,
      bottom[1]->gpu_data(), bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(ROIPoolingLayer);

}  // namespace caffe
