// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title BenchEmitter: many NodeAccessGranted logs per transaction, for the ingest benchmark.
/// @notice Benchmarks only. The event has exactly DstackAccessNFT's signature, so the listener
///         decodes these logs as grants; node ids are "node-<tokenId>", owners distinct.
contract BenchEmitter {
    event NodeAccessGranted(
        uint256 indexed tokenId, string nodeId, address indexed owner, string wireguardPublicKey
    );

    /// Emit `count` grants for tokens `firstToken`.. with the same key.
    function emitGrants(uint256 firstToken, uint256 count, string calldata key) external {
        for (uint256 t = firstToken; t < firstToken + count; t++) {
            emit NodeAccessGranted(
                t, string.concat("node-", _decimal(t)), address(uint160(0xB0B0000000 + t)), key
            );
        }
    }

    function _decimal(uint256 value) private pure returns (string memory) {
        if (value == 0) return "0";
        uint256 digits;
        for (uint256 v = value; v != 0; v /= 10) digits++;
        bytes memory out = new bytes(digits);
        for (; value != 0; value /= 10) out[--digits] = bytes1(uint8(48 + (value % 10)));
        return string(out);
    }
}
