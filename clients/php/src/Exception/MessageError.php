<?php

declare(strict_types=1);

namespace Rabbitry\Exception;

/** A message that cannot be encoded or read: the text is the reason, fit for a dead letter. */
final class MessageError extends RabbitryException
{
}
