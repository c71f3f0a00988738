// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.28;

/// @title StrobeInbox
/// @notice The L1 record of a strobe chain: batches of sealed L2 blocks, accepted strictly in
/// order from the registered sequencer key. Each batch names its L2 block range, the hash and
/// state root of its last block, and a commitment to its data: either the data itself as
/// calldata (kind 0, hashed here) or the certificate of a data-availability layer (kind 1,
/// EigenDA) with the hash of the data it stands for. Anyone can rebuild the chain from these
/// batches and check every state root (`strobe verify`).
contract StrobeInbox {
    /// @notice Data carried in this transaction's calldata; `dataHash` must be its keccak256.
    uint8 public constant DATA_CALLDATA = 0;
    /// @notice Data held by EigenDA; the calldata is the certificate, `dataHash` the keccak256
    /// of the data it retrieves.
    uint8 public constant DATA_EIGENDA = 1;

    /// @notice One accepted batch.
    struct Batch {
        uint64 firstBlock;
        uint64 lastBlock;
        uint8 dataKind;
        bytes32 lastBlockHash;
        bytes32 stateRoot;
        bytes32 dataHash;
    }

    /// @notice The only key allowed to post.
    address public immutable sequencer;
    /// @notice Index the next batch must carry.
    uint64 public nextIndex;
    /// @notice First L2 block the next batch must start at.
    uint64 public nextBlock;

    mapping(uint64 => Batch) private batches;

    /// @notice A batch was accepted.
    event BatchPosted(
        uint64 indexed index,
        uint64 firstBlock,
        uint64 lastBlock,
        bytes32 lastBlockHash,
        bytes32 stateRoot,
        uint8 dataKind,
        bytes32 dataHash
    );

    error NotSequencer(address sender);
    error WrongIndex(uint64 expected, uint64 got);
    error WrongFirstBlock(uint64 expected, uint64 got);
    error EmptyRange(uint64 firstBlock, uint64 lastBlock);
    error DataHashMismatch(bytes32 expected, bytes32 got);
    error UnknownDataKind(uint8 kind);

    constructor(address sequencer_) {
        sequencer = sequencer_;
    }

    /// @notice Appends batch `index` covering L2 blocks `firstBlock..=lastBlock`.
    function postBatch(
        uint64 index,
        uint64 firstBlock,
        uint64 lastBlock,
        bytes32 lastBlockHash,
        bytes32 stateRoot,
        uint8 dataKind,
        bytes32 dataHash,
        bytes calldata data
    ) external {
        if (msg.sender != sequencer) revert NotSequencer(msg.sender);
        if (index != nextIndex) revert WrongIndex(nextIndex, index);
        if (firstBlock != nextBlock) revert WrongFirstBlock(nextBlock, firstBlock);
        if (lastBlock < firstBlock) revert EmptyRange(firstBlock, lastBlock);
        if (dataKind == DATA_CALLDATA) {
            bytes32 got = keccak256(data);
            if (got != dataHash) revert DataHashMismatch(dataHash, got);
        } else if (dataKind != DATA_EIGENDA) {
            revert UnknownDataKind(dataKind);
        }
        batches[index] = Batch(firstBlock, lastBlock, dataKind, lastBlockHash, stateRoot, dataHash);
        nextIndex = index + 1;
        nextBlock = lastBlock + 1;
        emit BatchPosted(index, firstBlock, lastBlock, lastBlockHash, stateRoot, dataKind, dataHash);
    }

    /// @notice Batch `index`, once accepted.
    function batch(uint64 index) external view returns (Batch memory) {
        require(index < nextIndex, "no such batch");
        return batches[index];
    }
}
