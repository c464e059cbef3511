// deepcontext: tests of ROIPooling (values and gradients), CPU and GPU.
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/roi_pooling_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class ROIPoolingLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  ROIPoolingLayerTest()
      : data_(new Blob<Dtype>(2, 3, 6, 8)), rois_(new Blob<Dtype>(4, 5, 1, 1)),
        top_(new Blob<Dtype>()) {
    bottom_.push_back(data_);
    bottom_.push_back(rois_);
    top_vec_.push_back(top_);
  }
  virtual ~ROIPoolingLayerTest() { delete data_; delete rois_; delete top_; }

  void SetRoi(int i, Dtype n, Dtype x1, Dtype y1, Dtype x2, Dtype y2) {
    Dtype* r = rois_->mutable_cpu_data() + i * 5;
    r[0] = n; r[1] = x1; r[2] = y1; r[3] = x2; r[4] = y2;
  }

  Blob<Dtype>* const data_;
  Blob<Dtype>* const rois_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_, top_vec_;
};

TYPED_TEST_CASE(ROIPoolingLayerTest, TestDtypesAndDevices);

TYPED_TEST(ROIPoolingLayerTest, TestForwardValues) {
  typedef typename TypeParam::Dtype Dtype;
  Dtype* d = this->data_->mutable_cpu_data();
  for (int i = 0; i < this->data_->count(); ++i) {
    d[i] = i % 48;   // each plane holds 0..47 row-major, max bottom-right
  }
  this->SetRoi(0, 0, 0, 0, 7, 5);      // the whole 8x6 map
  this->SetRoi(1, 1, 2, 2, 5, 5);      // scale .5 below: cells 1..3
  this->SetRoi(2, 1, 100, 100, 120, 120);  // outside: empty bins
  this->SetRoi(3, 0, 0, 0, 0, 0);      // one cell
  LayerParameter param;
  param.mutable_roi_pooling_param()->set_pooled_h(2);
  param.mutable_roi_pooling_param()->set_pooled_w(2);
  ROIPoolingLayer<Dtype> layer(param);
  layer.SetUp(this->bottom_, this->top_vec_);
  layer.Forward(this->bottom_, this->top_vec_);
  ASSERT_EQ(this->top_->shape_string(), "4 3 2 2 (48)");
  const Dtype* t = this->top_->cpu_data();
  // whole map, 2x2 bins of 3 rows x 4 columns: maxima at the bins' ends
  EXPECT_EQ(t[0], 2 * 8 + 3);
  EXPECT_EQ(t[1], 2 * 8 + 7);
  EXPECT_EQ(t[2], 5 * 8 + 3);
  EXPECT_EQ(t[3], 5 * 8 + 7);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(t[2 * 12 + i], 0);   // empty
    EXPECT_EQ(t[3 * 12 + i], 0);   // cell (0, 0) holds 0
  }
  param.mutable_roi_pooling_param()->set_pooled_h(1);
  param.mutable_roi_pooling_param()->set_pooled_w(1);
  param.mutable_roi_pooling_param()->set_spatial_scale(0.5);
  ROIPoolingLayer<Dtype> half(param);
  half.SetUp(this->bottom_, this->top_vec_);
  half.Forward(this->bottom_, this->top_vec_);
  // region 1 on image 1: x, y in round(1)..round(2.5) = 1..3
  EXPECT_EQ(this->top_->cpu_data()[1 * 3], 3 * 8 + 3);
}

TYPED_TEST(ROIPoolingLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  FillerParameter filler_param;
  filler_param.set_std(1);
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(this->data_);
  this->SetRoi(0, 0, 0, 0, 7, 5);
  this->SetRoi(1, 1, 2, 1, 6, 4);
  this->SetRoi(2, 1, 1, 3, 3, 5);
  this->SetRoi(3, 0, 5, 0, 7, 2);
  LayerParameter param;
  param.mutable_roi_pooling_param()->set_pooled_h(3);
  param.mutable_roi_pooling_param()->set_pooled_w(2);
  ROIPoolingLayer<Dtype> layer(param);
  GradientChecker<Dtype> checker(1e-4, 1e-2);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_vec_, 0);
}

}  // namespace caffe
