"""The avatar DCGAN of ../Net.py and ../Train.py ported to PyTorch, for benchmarks/bench.py only.

It is the yardstick the Paddle code is timed against, so it matches it layer for layer and step
for step: the same generator (residual block on the 2x6x6 noise, four transposed convolutions,
Tanh) and discriminator (four conv + BatchNorm + leaky ReLU + dropout blocks, one linear layer),
BatchNorm momentum 0.5 in Paddle's sense (0.5 in PyTorch's too: the two conventions meet there),
softmax cross entropy, Adam(2e-4, beta1 0.8), and per batch: D on a generated batch, D on the
real batch, then 2 G steps on fresh noise with D's weights frozen. Nothing in the project imports
it; the project itself stays PaddlePaddle only.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

Z_DIM, Z_SHAPE = 72, (2, 6, 6)
BN_MOMENTUM = 0.5  # PyTorch weighs the new batch by momentum, Paddle the running value: 0.5 is both
LEAKY_SLOPE, DROPOUT = 0.2, 0.4
REAL, FAKE = 1, 0


def batch_norm(channels):
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn1 = batch_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = batch_norm(out_channels)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), batch_norm(out_channels))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


def up_block(in_channels, out_channels):
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1),
                         batch_norm(out_channels), nn.ReLU())


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.residual = ResidualBlock(Z_SHAPE[0], 256)
        self.up = nn.Sequential(up_block(256, 256), up_block(256, 128), up_block(128, 64))
        self.to_rgb = nn.ConvTranspose2d(64, 3, 4, stride=2, padding=1)

    def forward(self, z):
        return torch.tanh(self.to_rgb(self.up(self.residual(z.reshape(-1, *Z_SHAPE)))))


def down_block(in_channels, out_channels, norm=True):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1),
                         batch_norm(out_channels) if norm else nn.Identity(),
                         nn.LeakyReLU(LEAKY_SLOPE), nn.Dropout(DROPOUT))


class Discriminator(nn.Module):
    def __init__(self, input_norm=True):
        super().__init__()
        self.features = nn.Sequential(down_block(3, 64, norm=input_norm), down_block(64, 128),
                                      down_block(128, 256), down_block(256, 512))
        self.classify = nn.Linear(512 * 6 * 6, 2)

    def forward(self, image):
        return self.classify(torch.flatten(self.features(image), 1))


def gan_loss(logits, label):
    return F.cross_entropy(logits, torch.full((logits.shape[0],), label, dtype=torch.long))


def update(optimizer, loss):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_training(lr=2e-4, beta1=0.8, input_norm=True):
    """Fresh networks and their Adam optimizers, in training mode."""
    G, D = Generator(), Discriminator(input_norm)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(beta1, 0.999))
    return G, D, opt_g, opt_d


def train_step(G, D, opt_g, opt_d, real, g_steps=2):
    """One batch of the schedule, as Recipe.train_step; returns the three losses as floats."""
    batch = real.shape[0]
    with torch.no_grad():
        fake = G(torch.rand(batch, Z_DIM))
    d_fake = update(opt_d, gan_loss(D(fake), FAKE))
    d_real = update(opt_d, gan_loss(D(real), REAL))
    D.requires_grad_(False)  # as Recipe.FrozenWeights: G's steps need gradients through D, not D's own
    g_losses = [update(opt_g, gan_loss(D(G(torch.rand(batch, Z_DIM))), REAL)) for _ in range(g_steps)]
    D.requires_grad_(True)
    return float(d_fake), float(d_real), float(sum(g_losses)) / g_steps
