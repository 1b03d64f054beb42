-- Dead letters of sources without Kafka coordinates (history imports use
-- partition -1 and the row number) must insert, or the sink would retry
-- that batch forever: the columns take the contract's int/long range.
ALTER TABLE dead_letters MODIFY COLUMN source_partition Int32;
ALTER TABLE dead_letters MODIFY COLUMN source_offset Int64;
