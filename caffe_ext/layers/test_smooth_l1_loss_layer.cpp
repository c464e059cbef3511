// deepcontext: tests of SmoothL1Loss (values and gradients), CPU and GPU.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/smooth_l1_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class SmoothL1LossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  SmoothL1LossLayerTest() {
    FillerParameter gauss;
    gauss.set_std(1);
    GaussianFiller<Dtype> g(gauss);
    FillerParameter uni;
    uni.set_min(0);
    uni.set_max(2);
    UniformFiller<Dtype> u(uni);
    for (int i = 0; i < 4; ++i) {
      blobs_.push_back(new Blob<Dtype>(6, 8, 1, 1));
      if (i < 2) {
        g.Fill(blobs_[i]);
      } else {
        u.Fill(blobs_[i]);
      }
    }
    top_.push_back(new Blob<Dtype>());
  }
  virtual ~SmoothL1LossLayerTest() {
    for (int i = 0; i < 4; ++i) delete blobs_[i];
    delete top_[0];
  }

  vector<Blob<Dtype>*> Bottom(int n) {
    return vector<Blob<Dtype>*>(blobs_.begin(), blobs_.begin() + n);
  }

  // the loss computed here, independently of the layer
  Dtype Expected(int n, Dtype sigma) {
    Dtype s2 = sigma * sigma, sum = 0;
    for (int i = 0; i < blobs_[0]->count(); ++i) {
      Dtype in = n > 2 ? blobs_[2]->cpu_data()[i] : 1;
      Dtype out = n > 3 ? blobs_[3]->cpu_data()[i] : 1;
      Dtype x = in * (blobs_[0]->cpu_data()[i] - blobs_[1]->cpu_data()[i]);
      Dtype f = std::fabs(x) < 1 / s2 ? 0.5 * x * x * s2
                                      : std::fabs(x) - 0.5 / s2;
      sum += out * f;
    }
    return sum / blobs_[0]->num();
  }

  vector<Blob<Dtype>*> blobs_, top_;
};

TYPED_TEST_CASE(SmoothL1LossLayerTest, TestDtypesAndDevices);

TYPED_TEST(SmoothL1LossLayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  for (int n = 2; n <= 4; ++n) {
    for (Dtype sigma : {Dtype(1), Dtype(3)}) {
      LayerParameter param;
      param.mutable_smooth_l1_loss_param()->set_sigma(sigma);
      SmoothL1LossLayer<Dtype> layer(param);
      vector<Blob<Dtype>*> bottom = this->Bottom(n);
      layer.SetUp(bottom, this->top_);
      layer.Forward(bottom, this->top_);
      EXPECT_NEAR(this->top_[0]->cpu_data()[0], this->Expected(n, sigma),
                  1e-4);
    }
  }
}

TYPED_TEST(SmoothL1LossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  for (int n = 2; n <= 4; n += 2) {
    for (Dtype sigma : {Dtype(1), Dtype(3)}) {
      LayerParameter param;
      param.mutable_smooth_l1_loss_param()->set_sigma(sigma);
      param.add_loss_weight(3);
      SmoothL1LossLayer<Dtype> layer(param);
      vector<Blob<Dtype>*> bottom = this->Bottom(n);
      GradientChecker<Dtype> checker(1e-3, 2e-2, 1701);
      checker.CheckGradientExhaustive(&layer, bottom, this->top_, 0);
      checker.CheckGradientExhaustive(&layer, bottom, this->top_, 1);
    }
  }
}

}  // namespace caffe
