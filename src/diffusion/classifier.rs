//! A small pixel-space CNN that names the shape in an image. Evaluation uses it to score
//! whether generated images show the class they were asked for; it sees pixels only, never
//! latents, so it judges the whole pipeline (UNet and decoder).

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Conv2d, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::blocks::{conv3x3, space_to_depth, ResBlock};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub image_channels: usize,
    /// Channels at 16x16 and at 8x8 / 4x4.
    pub channels: [usize; 2],
    pub groups: usize,
    pub n_classes: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            image_channels: 3,
            channels: [32, 64],
            groups: 8,
            n_classes: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Classifier {
    pub config: ClassifierConfig,
    conv_in: Conv2d,
    down0: Conv2d,
    block: ResBlock,
    down1: Conv2d,
    head: Linear,
}

impl Classifier {
    pub fn new(config: &ClassifierConfig, vb: VarBuilder) -> Result<Self> {
        let [c0, c1] = config.channels;
        Ok(Self {
            config: config.clone(),
            conv_in: conv3x3(config.image_channels * 4, c0, 1, vb.pp("conv_in"))?,
            down0: conv3x3(c0, c1, 2, vb.pp("down0"))?,
            block: ResBlock::new(c1, c1, config.groups, None, vb.pp("block"))?,
            down1: conv3x3(c1, c1, 2, vb.pp("down1"))?,
            head: linear(c1, config.n_classes, vb.pp("head"))?,
        })
    }

    /// Class logits `[B, n_classes]` for images `[B, 3, 32, 32]` in [-1, 1].
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let h = self.conv_in.forward(&space_to_depth(images, 2)?)?.silu()?;
        let h = self.down0.forward(&h)?.silu()?;
        let h = self.block.forward(&h, None)?;
        let h = self.down1.forward(&h)?.silu()?;
        let pooled = h.mean(3)?.mean(2)?;
        self.head.forward(&pooled)
    }

    /// The most likely class of each image.
    pub fn predict(&self, images: &Tensor) -> Result<Vec<u32>> {
        self.forward(images)?.argmax(1)?.to_vec1::<u32>()
    }
}
